"""GRPO (``cai train ppo --algo grpo``) end to end on the tiny biased policy of test_train_ppo.py (CPU): the
programmatic reward rises, a large β keeps the policy near the reference, β = 0 loads no reference, several
rewards are weighted and summed, and a d-RLAIF judge can be a served (OpenAI-compatible) endpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_train_ppo import make_config, one_thread, policy_dir, prompts_file, py_reward, reward_module_dir  # noqa: F401

from trainers.metrics import read_metrics
from trainers.ppo import train_ppo


def grpo_config(out: Path, prompts: Path, model: Path, reward, **overrides):
    options = dict(algo="grpo", batch_size=4, group_size=4, iterations=10)
    options.update(overrides)
    return make_config(out, prompts, model, reward, **options)


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, prompts_file, policy_dir, py_reward):  # noqa: F811
    torch.set_num_threads(1)
    config = grpo_config(tmp_path_factory.mktemp("grpo") / "out", prompts_file, policy_dir, py_reward, kl_coef=0.01)
    return config, train_ppo(config)


def test_grpo_raises_a_programmatic_reward(grpo_run):
    config, summary = grpo_run
    metrics = read_metrics(config.out)
    rewards = [m["reward"] for m in metrics]
    print("grpo rewards", [round(r, 3) for r in rewards], "kl", [round(m["kl"], 2) for m in metrics])
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.15, f"mean reward did not rise clearly: {rewards}"
    assert all(math.isfinite(m["kl"]) and math.isfinite(m["kl_k3"]) for m in metrics)
    assert "value_loss" not in metrics[-1] and not (Path(config.out) / "value_head.safetensors").exists()
    assert summary["algo"] == "grpo" and summary["finished"]
    samples = [json.loads(ln) for ln in (Path(config.out) / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"] == samples[1]["prompt"]  # the group_size samples of a prompt side by side


def test_grpo_large_beta_keeps_the_policy_near_the_reference(tmp_path, grpo_run, prompts_file, policy_dir, py_reward):  # noqa: F811
    small_config, _ = grpo_run
    config = grpo_config(tmp_path / "grpo-beta", prompts_file, policy_dir, py_reward, kl_coef=5.0)
    train_ppo(config)
    small, large = read_metrics(small_config.out), read_metrics(config.out)
    kl_small = sum(m["kl_k3"] for m in small[-3:]) / 3
    kl_large = sum(m["kl_k3"] for m in large[-3:]) / 3
    print("k3 kl small β", kl_small, "large β", kl_large)
    assert kl_large < 0.25 * kl_small, (kl_small, kl_large)


def test_grpo_without_kl_loads_no_reference_and_options_run(tmp_path, prompts_file, policy_dir, py_reward, monkeypatch):  # noqa: F811
    """β = 0: no reference model is made nor scored; Dr. GRPO (no std) with per-sequence aggregation runs;
    KL is reported as 0."""
    import trainers.rollout as rollout

    calls, original = [], rollout.score_rollout
    monkeypatch.setattr(rollout, "score_rollout", lambda model, reference, *a, **k: calls.append((reference, k)) or original(model, reference, *a, **k))
    config = grpo_config(tmp_path / "grpo-nokl", prompts_file, policy_dir, py_reward, kl_coef=0.0, iterations=2,
                         scale_rewards=False, loss_aggregation="sequence", ppo_epochs=1)
    train_ppo(config)
    assert calls and all(reference is None and k["with_reference"] is False for reference, k in calls)
    metrics = read_metrics(config.out)
    assert [m["kl"] for m in metrics] == [0.0, 0.0] and all(m["kl_k3"] == 0.0 for m in metrics)


def test_several_rewards_are_weighted_and_summed(tmp_path, prompts_file, policy_dir, py_reward):  # noqa: F811
    from trainers.ppo import PPOConfig
    from trainers.rewards import reward_from_config

    config = grpo_config(tmp_path / "x", prompts_file, policy_dir, [py_reward, py_reward], reward_weight=[2.0, -0.5])
    reward = reward_from_config(config, "cpu")
    assert reward([[{"role": "user", "content": "Hi"}]] * 2, ["cat dog", "sun"]) == pytest.approx([0.75, 0.0])
    assert "2·py:" in reward.name
    from trainers.config import ConfigError

    with pytest.raises(ConfigError, match="reward-weight"):
        grpo_config(tmp_path / "y", prompts_file, policy_dir, [py_reward, py_reward], reward_weight=[1.0])
    with pytest.raises(ConfigError, match="group-size"):
        grpo_config(tmp_path / "y", prompts_file, policy_dir, py_reward, group_size=1)
    assert PPOConfig(prompts="p", model="m", reward="pm:x", out="o").reward == ["pm:x"]


def test_grpo_with_a_served_judge(tmp_path, prompts_file, policy_dir, tiny_model_dir):  # noqa: F811
    """d-RLAIF through an OpenAI-compatible server (the fake one, real HTTP): the judge rates a response
    higher the more " cat" it holds (its rating log-probs favour " 10" after such a response). At most
    --reward-concurrency requests are in flight, and the policy learns to say cat."""
    pytest.importorskip("labelers.score")
    from fake_openai_server import FakeOpenAIServer

    def token_logprob(prefix: str, token: str) -> float:
        if token.strip() in {str(i) for i in range(1, 11)} or token == "0":
            # the response sits between the last "Response" header and the rating cue; count its cats
            cats = prefix.count("cat")
            if token == " 10":
                return -0.1 if cats >= 2 else -6.0
            return -0.5 if token == " 1" and cats == 0 else -4.0
        return -1.0

    with FakeOpenAIServer(token_logprob=token_logprob) as server:
        reward = f"ai:judge@{server.base_url}"
        config = grpo_config(tmp_path / "grpo-served", prompts_file, policy_dir, reward, iterations=3, batch_size=2,
                             reward_concurrency=3, reward_tokenizer=str(tiny_model_dir), ppo_epochs=1)
        train_ppo(config)
        assert 1 <= server.max_in_flight <= 3
        assert all(r.path.endswith("/completions") and r.body["model"] == "judge" for r in server.requests)
    samples = [json.loads(ln) for ln in (Path(config.out) / "samples.jsonl").read_text().splitlines()]
    assert samples and all(-1.0 <= s["score"] <= 1.0 for s in samples)
    metrics = read_metrics(config.out)
    assert all(math.isfinite(m["reward"]) for m in metrics)

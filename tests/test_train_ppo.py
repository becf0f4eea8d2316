"""PPO / RLOO end to end on tiny models (CPU): learning happens, β holds the policy near the reference,
a preference model can be the reward, and a crashed run resumes exactly.

The policy is a tiny random Llama whose output layer is biased towards 8 single-token words (and EOS), so
that from the start it writes short "sentences" of those words and the target word " cat" appears in
~10 % of positions: a random tiny model spreads its mass over all 49 152 tokens and would almost never
emit any given word, leaving RL nothing to reinforce.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from trainers.common import load_config, read_metrics
from trainers.ppo import PPOConfig, train_ppo

WORDS = [" cat", " dog", " sun", " tree", " blue", " red", " house", " road"]
TARGET = "cat"
PROMPTS = ["Say something.", "Tell me a story.", "Name some things.", "What do you see?", "List words.", "Go on.",
           "Write a line.", "Describe the room.", "Hello!", "Continue.", "Your turn.", "Speak.", "Talk to me.",
           "What now?", "Any ideas?", "Tell me more."]

REWARD_MODULE = '''
def target_fraction(prompts, responses):
    """Share of the response's words that are the target word."""
    return [sum(w == "cat" for w in r.split()) / max(len(r.split()), 1) for r in responses]
'''


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and stay fast when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_biased_policy(path: Path, seed: int = 0, word_logit: float = 10.0, eos_logit: float = 9.0) -> list[int]:
    """A tiny Llama that writes mostly WORDS: every input embedding gets a constant +1 in dimension 0, which
    survives to the final norm as ≈ +5.7, and the output rows of WORDS (and EOS) read that dimension, so
    their logits sit near ``word_logit`` (EOS ``eos_logit``) while all others stay near 0."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from conftest import TOKENIZER_DIR

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in WORDS]
    assert all(len(i) == 1 for i in ids), "every word must be a single token"
    ids = [i[0] for i in ids]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[ids, 0] = word_logit / math.sqrt(32)
        model.lm_head.weight[tokenizer.eos_token_id, 0] = eos_logit / math.sqrt(32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return ids


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("biased-policy")
    build_biased_policy(path)
    return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def py_reward(tmp_path_factory) -> str:
    """A ``py:module:function`` reward importable from a temporary folder."""
    folder = tmp_path_factory.mktemp("reward-module")
    (folder / "ppo_test_rewards.py").write_text(REWARD_MODULE, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield "py:ppo_test_rewards:target_fraction"
    sys.path.remove(str(folder))
    sys.modules.pop("ppo_test_rewards", None)


def make_config(out: Path, prompts: Path, model: Path, reward: str, **overrides) -> PPOConfig:
    options = dict(
        prompts=[str(prompts)], model=str(model), reward=reward, out=str(out), iterations=10, batch_size=16,
        max_new_tokens=8, lr=5e-3, kl_coef=0.05, ppo_epochs=4, minibatch_size=8, rloo_k=4, resume="never",
        quiet=True, save_every=100, sample_every=5, plot_every=100,
    )
    options.update(overrides)
    return load_config(PPOConfig, None, **options)


def rewards_of(out: Path) -> list[float]:
    return [r["reward"] for r in read_metrics(out)]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory, prompts_file, policy_dir, py_reward):
    """One 10-iteration PPO run with a small β, shared by the tests below: ``(config, summary)``."""
    torch.set_num_threads(1)
    config = make_config(tmp_path_factory.mktemp("ppo") / "out", prompts_file, policy_dir, py_reward)
    return config, train_ppo(config)


def test_ppo_raises_a_programmatic_reward(ppo_run):
    config, summary = ppo_run
    metrics = read_metrics(config.out)
    rewards = [m["reward"] for m in metrics]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    print("ppo rewards", [round(r, 3) for r in rewards], "kl", [round(m["kl"], 2) for m in metrics])
    assert last > first + 0.15, f"mean reward did not rise clearly: {rewards}"
    assert all(math.isfinite(m["kl"]) and math.isfinite(m["value_loss"]) for m in metrics)
    for key in ("entropy", "clip_fraction", "value_loss", "response_length", "rollout_s", "reward_s", "update_s", "kl_coef"):
        assert key in metrics[-1], key
    assert summary["finished"] and summary["iterations_done"] == 10
    # the final policy loads with from_pretrained, and it samples the target more than the initial one
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(config.out)
    AutoTokenizer.from_pretrained(config.out)
    assert (Path(config.out) / "ppo_curves.png").stat().st_size > 1000
    assert (Path(config.out) / "value_head.safetensors").exists()
    samples = [json.loads(ln) for ln in (Path(config.out) / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 5, 10} and all("response" in s for s in samples)


def test_rloo_raises_a_programmatic_reward(tmp_path, prompts_file, policy_dir, py_reward):
    config = make_config(tmp_path / "rloo", prompts_file, policy_dir, py_reward, algo="rloo", batch_size=4, rloo_k=4)
    train_ppo(config)
    metrics = read_metrics(config.out)
    rewards = [m["reward"] for m in metrics]
    print("rloo rewards", [round(r, 3) for r in rewards], "kl", [round(m["kl"], 2) for m in metrics])
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.15, f"mean reward did not rise clearly: {rewards}"
    assert all(math.isfinite(m["kl"]) for m in metrics)
    assert "value_loss" not in metrics[-1]  # RLOO has no value head
    assert not (Path(config.out) / "value_head.safetensors").exists()


def test_large_beta_keeps_the_policy_near_the_reference(tmp_path, ppo_run, prompts_file, policy_dir, py_reward):
    small_config, _ = ppo_run
    config = make_config(tmp_path / "ppo-beta", prompts_file, policy_dir, py_reward, kl_coef=3.0)
    train_ppo(config)
    small, large = read_metrics(small_config.out), read_metrics(config.out)
    kl_small = sum(m["kl"] for m in small[-3:]) / 3
    kl_large = sum(m["kl"] for m in large[-3:]) / 3
    print("kl small β", kl_small, "kl large β", kl_large)
    assert kl_large < 0.25 * kl_small, (kl_small, kl_large)
    assert kl_large < 1.0


class CrashOnCall:
    """The py reward, but raising on its n-th call: a run killed mid-iteration."""

    def __init__(self, n: int):
        import ppo_test_rewards

        self.n, self.calls, self.fn = n, 0, ppo_test_rewards.target_fraction

    def __call__(self, conversations, responses):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("simulated kill")
        return self.fn([m[-1]["content"] for m in conversations], responses)


def test_resume_after_a_crash_continues_exactly(tmp_path, ppo_run, prompts_file, policy_dir, py_reward):
    """Crash in iteration 7 (checkpoints every 3: step 6 exists), rerun: the run continues from step 6 and
    ends with the same weights and the same curve as the uninterrupted run."""
    from safetensors.torch import load_file

    reference_config, _ = ppo_run
    config = make_config(tmp_path / "ppo-resume", prompts_file, policy_dir, py_reward, save_every=3, resume="auto")
    with pytest.raises(KeyboardInterrupt):
        train_ppo(config, reward_fn=CrashOnCall(7))
    assert [m["step"] for m in read_metrics(config.out)] == [1, 2, 3, 4, 5, 6]
    assert (Path(config.out) / "checkpoints" / "step-6").is_dir()
    summary = train_ppo(config)  # the rerun finds checkpoints/step-6
    assert summary["finished"]
    numbers = ("reward", "kl", "entropy", "value_loss", "clip_fraction", "kl_coef", "response_length")
    resumed, straight = read_metrics(config.out), read_metrics(reference_config.out)
    assert [m["step"] for m in resumed] == list(range(1, 11))
    for a, b in zip(resumed, straight):
        for key in numbers:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    ours, theirs = load_file(str(Path(config.out) / "model.safetensors")), load_file(str(Path(reference_config.out) / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6), name

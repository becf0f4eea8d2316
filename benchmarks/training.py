"""Training throughput and peak memory: our SFT and DPO trainers vs Hugging Face TRL's SFTTrainer and
DPOTrainer, on the same model, data, batch size, sequence length and number of steps.

    python benchmarks/training.py                       # tiny Llama (hidden 256, 4 layers) built here
    python benchmarks/training.py --model smollm2-135m --steps 4 --batch-size 2 --seq-len 128
    python benchmarks/training.py --only dpo --steps 12

Every (framework, method) pair runs in its own subprocess, so its memory is measured alone:
peak memory is the rise of the process's peak RSS (``resource.getrusage``) above its RSS after the
imports, i.e. model + optimizer + activations + data; on CUDA it is ``torch.cuda.max_memory_allocated``.
All examples tokenize to the same length, so every step of every framework processes the same number
of tokens; tokens/s counts all tokens in the batch (prompt and response, chosen and rejected).

Printed per run: two throughputs, the CPU time and the peak memory. The throughputs:
- end to end: model load + tokenization + (reference pass) + all steps + saving the final model —
  what a user waits for;
- per step (median): the optimizer steps alone. Our DPO does its reference forward pass once before
  the steps (precompute), TRL's default does it inside every step, so this one flatters ours; the
  ``trl-dpo-precompute`` row (TRL with ``precompute_ref_log_probs=True``) is the like-for-like one.

Needs TRL: ``pip install 'cai-toolkit[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO_ROOT / "tests" / "assets" / "smollm2-tokenizer"
WORDS = ("cat dog sun sky tree river bird song house road car book light water fire stone green blue red "
         "small big fast slow warm cold good bad new old day night").split()
RUNS = {"sft": ("ours-sft", "trl-sft"), "dpo": ("ours-dpo", "trl-dpo", "trl-dpo-precompute")}


# ---------------------------------------------------------------- setup (parent process)


def build_model(path: Path, hidden: int, layers: int) -> str:
    """A random Llama with the SmolLM2 tokenizer (vocab 49,152), saved as a normal model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def single_token_words(tokenizer) -> list[str]:
    """Words that are one token after a space, so texts of n words have exactly n tokens."""
    return [w for w in WORDS if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def write_data(folder: Path, tokenizer, n_rows: int, seq_len: int) -> dict:
    """SFT rows (ours: messages; TRL: prompt/completion, so both put the loss on the response only)
    and preference rows, every one the same length in tokens: ``seq_len`` with its template."""
    from trainers.data import tokenize_messages

    words = single_token_words(tokenizer)
    rng = random.Random(0)
    prompt = [{"role": "user", "content": "Tell me a story about" + "".join(" " + rng.choice(words) for _ in range(8))}]
    overhead = len(tokenize_messages(tokenizer, prompt + [{"role": "assistant", "content": "x"}])[0]) - 1
    n_words = max(4, seq_len - overhead)

    def response() -> list[dict]:
        return [{"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(n_words))}]

    sft, sft_trl, prefs = [], [], []
    for i in range(n_rows):
        completion = response()
        sft.append({"id": f"s{i}", "messages": prompt + completion})
        sft_trl.append({"prompt": prompt, "completion": completion})
        prefs.append({"id": f"p{i}", "prompt": prompt, "chosen": response(), "rejected": response(), "p_chosen": 1.0})
    for name, rows in (("sft.jsonl", sft), ("sft_trl.jsonl", sft_trl), ("prefs.jsonl", prefs)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lengths = {len(tokenize_messages(tokenizer, r["messages"])[0]) for r in sft}
    lengths |= {len(tokenize_messages(tokenizer, r["prompt"] + r[c])[0]) for r in prefs for c in ("chosen", "rejected")}
    if len(lengths) != 1:
        raise RuntimeError(f"benchmark data should have one length, got {sorted(lengths)}")
    return {"tokens_per_sequence": lengths.pop()}


# ---------------------------------------------------------------- workers (one subprocess each)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(run: str, spec: dict) -> dict:
    import torch  # noqa: F401  (imports first: the baseline includes every library)
    import transformers  # noqa: F401

    if run.startswith("trl"):
        import trl  # noqa: F401
    else:
        import trainers.dpo  # noqa: F401
        import trainers.sft  # noqa: F401
    cuda = torch.cuda.is_available()
    baseline = current_rss_bytes()
    out = Path(spec["out"]) / run
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    step_seconds = {"ours-sft": run_ours_sft, "ours-dpo": run_ours_dpo}.get(run, run_trl)(run, spec, out)
    elapsed = time.perf_counter() - began
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes() - baseline
    return {"run": run, "seconds": elapsed, "cpu_seconds": cpu_seconds, "step_seconds": step_seconds, "peak_bytes": peak,
            "memory": "cuda max_memory_allocated" if cuda else "peak RSS rise"}


def common_options(spec: dict, out: Path) -> dict:
    return dict(model=spec["model"], out=str(out), max_steps=spec["steps"], batch_size=spec["batch_size"],
                max_length=spec["seq_len"] + 8, eval_fraction=0.0, quiet=True, save_every=10**9, resume="never",
                warmup_ratio=0.0, seed=0, lr=1e-5)


def step_times_from_metrics(out: Path) -> list[float]:
    from trainers.metrics import read_metrics

    return [m["tokens"] / m["tokens_per_s"] for m in read_metrics(out) if "tokens_per_s" in m]


def run_ours_sft(run: str, spec: dict, out: Path) -> list[float]:
    from trainers.sft import SFTConfig, train_sft

    train_sft(SFTConfig(data=[str(Path(spec["data"]) / "sft.jsonl")], **common_options(spec, out)))
    return step_times_from_metrics(out)


def run_ours_dpo(run: str, spec: dict, out: Path) -> list[float]:
    from trainers.dpo import DPOConfig, train_dpo

    train_dpo(DPOConfig(data=[str(Path(spec["data"]) / "prefs.jsonl")], beta=0.1, **common_options(spec, out)))
    return step_times_from_metrics(out)


def run_trl(run: str, spec: dict, out: Path) -> list[float]:
    import trl
    from datasets import load_dataset
    from transformers import AutoTokenizer, TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    shared = dict(output_dir=str(out), per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
                  max_steps=spec["steps"], learning_rate=1e-5, lr_scheduler_type="cosine", warmup_steps=0,
                  logging_steps=1, save_strategy="no", report_to=[], max_length=spec["seq_len"] + 8,
                  dataloader_num_workers=0, bf16=spec["cuda"], disable_tqdm=True, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    timer = StepTimer()
    if run == "trl-sft":
        data = load_dataset("json", data_files=str(Path(spec["data"]) / "sft_trl.jsonl"), split="train")
        trainer = trl.SFTTrainer(model=spec["model"], args=trl.SFTConfig(packing=False, **shared),
                                 train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    else:
        data = load_dataset("json", data_files=str(Path(spec["data"]) / "prefs.jsonl"), split="train")
        data = data.remove_columns(["id", "p_chosen"])
        config = trl.DPOConfig(beta=0.1, precompute_ref_log_probs=run == "trl-dpo-precompute", **shared)
        trainer = trl.DPOTrainer(model=spec["model"], args=config, train_dataset=data, processing_class=tokenizer,
                                 callbacks=[timer])
    trainer.train()
    trainer.save_model(str(out))
    return timer.times


# ---------------------------------------------------------------- report


def human_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or `smollm2-135m` (default: a random Llama built here)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the built model")
    parser.add_argument("--layers", type=int, default=4, help="layers of the built model")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=4, help="examples (pairs for DPO) per step")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (prompt + response)")
    parser.add_argument("--only", choices=sorted(RUNS), default=None, help="benchmark only SFT or only DPO")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, json.loads(Path(args.spec).read_text()))))
        return

    import torch
    from transformers import AutoTokenizer

    from engines.embedded import resolve_model

    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="cai-train-bench-") as tmp:
        tmp = Path(tmp)
        model = resolve_model(args.model) if args.model else build_model(tmp / "model", args.hidden, args.layers)
        tokenizer = AutoTokenizer.from_pretrained(model)
        n_rows = args.steps * args.batch_size
        info = write_data(tmp, tokenizer, n_rows, args.seq_len)
        spec = {"model": model, "data": str(tmp), "out": str(tmp / "runs"), "steps": args.steps,
                "batch_size": args.batch_size, "seq_len": args.seq_len, "cuda": torch.cuda.is_available()}
        (tmp / "spec.json").write_text(json.dumps(spec))
        device = torch.cuda.get_device_name() if spec["cuda"] else f"CPU ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})"
        print(f"model {args.model or f'random Llama hidden {args.hidden}, {args.layers} layers'}; {args.steps} steps × batch "
              f"{args.batch_size} × {info['tokens_per_sequence']} tokens per sequence; {device}; trl {_trl_version()}")
        methods = [args.only] if args.only else ["sft", "dpo"]
        results = {}
        for method in methods:
            for run in RUNS[method]:
                results[run] = run_worker(run, tmp / "spec.json")
        print()
        print(f"{'run':<20}{'end-to-end tok/s':>18}{'per-step tok/s':>16}{'CPU-seconds':>13}{'peak memory':>14}")
        for method in methods:
            sequences = args.batch_size * (2 if method == "dpo" else 1)
            step_tokens = sequences * info["tokens_per_sequence"]
            for run in RUNS[method]:
                r = results[run]
                steady = r["step_seconds"][1:] or r["step_seconds"]
                r["end_to_end_tps"] = step_tokens * args.steps / r["seconds"]
                r["step_tps"] = step_tokens / statistics.median(steady)
                print(f"{run:<20}{r['end_to_end_tps']:>18,.0f}{r['step_tps']:>16,.0f}{r['cpu_seconds']:>13,.0f}"
                      f"{human_bytes(r['peak_bytes']):>14}")
            ours = results[RUNS[method][0]]
            for other in RUNS[method][1:]:
                theirs = results[other]
                print(f"  ours / {other}: end-to-end speed ×{ours['end_to_end_tps'] / theirs['end_to_end_tps']:.2f}, "
                      f"per-step speed ×{ours['step_tps'] / theirs['step_tps']:.2f}, "
                      f"CPU time ×{ours['cpu_seconds'] / theirs['cpu_seconds']:.2f}, "
                      f"memory ×{ours['peak_bytes'] / theirs['peak_bytes']:.2f}")
        print(f"(memory: {results[next(iter(results))]['memory']}; speed ratios > 1 mean ours is faster, CPU-time and "
              f"memory ratios < 1 mean ours uses less; CPU-seconds = user + system time of the whole run, the figure "
              f"least disturbed by other load on the machine; load average now {os.getloadavg()[0]:.1f})")


def run_worker(run: str, spec_path: Path) -> dict:
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", run, "--spec", str(spec_path)],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{run} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    print(f"  {run}: done in {time.perf_counter() - began:.0f} s", flush=True)
    return json.loads(lines[-1][len("RESULT "):])


def _trl_version() -> str:
    try:
        import trl

        return trl.__version__
    except ImportError:
        raise SystemExit("this benchmark compares with TRL: pip install 'cai-toolkit[bench]'") from None


if __name__ == "__main__":
    main()

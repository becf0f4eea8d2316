"""``cai constitution try FILE --prompts …``: critique → revision under chosen principles on a few prompts,
side by side, so a wording change can be judged in a minute on the embedded model.

The work is :func:`generators.critique_revision.sl_cai_chunk` (the same conversation, few-shot prefix,
stage batching and seeding as ``cai generate sl-cai``), run once per principle with a constitution
narrowed to that principle; the initial answers are the same across principles (same prefix, same
per-stage seed). Nothing is written except the optional HTML page.
"""

from __future__ import annotations

import shutil
import textwrap
from itertools import zip_longest
from pathlib import Path
from typing import Optional

from generators.config import GenerateEngineOptions
from jobs.config import ConfigError, opt


class TryConfig(GenerateEngineOptions):
    """Options of `cai constitution try`."""

    constitution: str = opt(..., "Constitution YAML/JSON file, or the name of a shipped one.", positional=True, required=True, metavar="FILE")
    prompts: list[str] = opt([], "A prompt file (.jsonl / .txt, as for `cai generate`) or a prompt's text; repeatable.", short="-p")
    principle: list[str] = opt([], "critique_revision principle id to try; repeatable (default: the first 3 of the constitution).")
    n: int = opt(4, "Prompts used (the first N of those given).")
    max_new_tokens: int = opt(128, "Token limit of each answer, critique and revision.")
    temperature: float = opt(0.0, "Sampling temperature (0 = greedy: two wordings compared on the same answers).")
    seed: int = opt(0, "Seed of sampling.")
    few_shot: Optional[int] = opt(None, "Show only the first N few-shot examples of the constitution (default all).")
    batch_size: int = opt(8, "Requests per forward batch.")
    html: Optional[Path] = opt(None, "Also write the comparison as an HTML page (the report's style).")
    width: Optional[int] = opt(None, "Terminal width for the side-by-side columns (default: this terminal's).")

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("--prompts: give a prompt file or a prompt's text (repeatable)")
        if self.n < 1 or self.max_new_tokens < 1:
            raise ConfigError(f"--n and --max-new-tokens must be ≥ 1, got {self.n} and {self.max_new_tokens}")


def gather_prompts(values: list[str], n: int):
    """The first ``n`` prompts from files (read like `cai generate` reads them) and literal texts, in order."""
    from generators.inputs import PromptItem, read_prompts
    from jobs.rundir import stable_id

    items = []
    for value in values:
        path = Path(value)
        if path.is_file():
            items += read_prompts(path)
        else:
            items.append(PromptItem(id=stable_id("try", value), messages=[{"role": "user", "content": value}]))
    return items[:n]


def try_principles(config: TryConfig, constitution, engine) -> dict:
    """Run critique → revision for each chosen principle on the prompts; returns what the views show."""
    from engines.base import GenerationParams
    from generators.critique_revision import conversation_prefix, sl_cai_chunk

    from .sections import MATERIAL_SIMILARITY, similarity

    ids = config.principle or [p.id for p in constitution.critique_revision[:3]]
    known = [p.id for p in constitution.critique_revision]
    for pid in ids:
        if pid not in known:
            raise ConfigError(f"--principle {pid!r}: no critique_revision principle of that id in {constitution.ref} "
                              f"(it has: {', '.join(known)})")
    prompts = gather_prompts(config.prompts, config.n)
    if not prompts:
        raise ConfigError("--prompts: no prompts found")
    prefix = conversation_prefix(constitution, few_shot=config.few_shot)
    few_shot = len(constitution.few_shot[: config.few_shot])
    params = GenerationParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)
    by_principle = {}
    for pid in ids:
        narrowed = constitution.model_copy(update={"critique_revision": [constitution.critique_principle(pid)]})
        batch = []
        for start in range(0, len(prompts), max(1, config.batch_size)):
            result = sl_cai_chunk(engine, prompts[start : start + config.batch_size], constitution=narrowed, prefix=prefix, rounds=1,
                                  revision_only=False, seed=config.seed, params=params, few_shot=few_shot)
            batch += result.records
        by_principle[pid] = {r["id"]: r for r in batch}
    rows = []
    for item in prompts:
        cells = []
        initial = next((by_principle[pid][item.id]["initial_response"] for pid in ids if item.id in by_principle[pid]), "")
        for pid in ids:
            record = by_principle[pid].get(item.id)
            rd = record["rounds"][0] if record and record["rounds"] else {}
            s = similarity(initial, rd.get("revision") or "")
            cells.append({"principle": pid, "critique": rd.get("critique") or "(skipped: too long)", "revision": rd.get("revision") or "",
                          "similarity": s, "changed": s < MATERIAL_SIMILARITY})
        rows.append({"prompt": item.text, "initial": initial, "cells": cells})
    return {"constitution": constitution.ref, "hash": constitution.content_hash, "model": engine.model_id, "principles": ids,
            "principle_text": {pid: constitution.critique_principle(pid).critique for pid in ids}, "rows": rows}


def _columns(texts: list[str], width: int) -> list[str]:
    """Texts wrapped to equal columns, side by side, separated by │."""
    col = max(16, (width - 3 * (len(texts) - 1)) // len(texts))
    wrapped = [[line for para in (t or "").splitlines() or [""] for line in (textwrap.wrap(para, col) or [""])] for t in texts]
    return [" │ ".join(cell.ljust(col) for cell in line).rstrip() for line in zip_longest(*wrapped, fillvalue="")]


def format_terminal(result: dict, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((120, 40)).columns
    out = [f"{result['constitution']} {result['hash']} · model {result['model']} · principles {', '.join(result['principles'])}"]
    for n, row in enumerate(result["rows"], 1):
        out += ["", "═" * width, *textwrap.wrap(f"prompt {n}: {row['prompt']}", width), "─" * width, "initial answer:"]
        out += textwrap.wrap(row["initial"], width) or [""]
        out.append("─" * width)
        out += _columns([f"[{c['principle']}] critique" for c in row["cells"]], width)
        out += _columns([c["critique"] for c in row["cells"]], width)
        out += _columns(["revision" + (" (materially revised)" if c["changed"] else f" (similarity {c['similarity']:.2f})")
                         for c in row["cells"]], width)
        out += _columns([c["revision"] for c in row["cells"]], width)
    return "\n".join(out)


def write_html(result: dict, path: Path) -> None:
    from .render import render_page

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page("try.html.j2", title=f"Trying {result['constitution']}", **result), encoding="utf-8")

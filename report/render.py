"""``cai report``: read the runs, build each section, render one self-contained HTML page.

The page is rendered by a sandboxed, autoescaping Jinja environment (records may hold hostile HTML:
every text is escaped), pictures are embedded PNGs, the little JavaScript (the example filter) is
inline, and a Content-Security-Policy forbids the page to load anything from anywhere.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Iterable

from .discover import TRAIN_KINDS, ReportError, Run, discover

TEMPLATES = Path(__file__).resolve().parent / "templates"
LABEL_KINDS = ("label-preference", "label-binary", "label-score")
SECTIONS = ("constitution", "sl-cai", "labels", "training", "evaluation")


def _env():
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                               trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    env.filters["num"] = lambda v, d=3: "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    return env


def render_page(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


def build_report(roots: Iterable[str | os.PathLike], *, constitution: str | None = None, max_examples: int = 100,
                 title: str | None = None) -> tuple[str, dict[str, list[str]]]:
    """(the HTML page, {section: names of the runs shown in it}) for the runs in or under ``roots``."""
    from generators.records import SLCAIRecord
    from labelers.records import RECORD_MODELS

    from .sections import constitution_section, label_eval_section, label_section, records, sl_cai_section
    from .training import eval_section, training_section

    roots = [Path(r) for r in roots]
    runs = discover(roots)
    if not runs:
        raise ReportError(f"no runs found in {', '.join(map(str, roots))} (looked for run.json, summary.json, metrics.jsonl "
                          "and label-eval outputs, up to 4 folders deep)")
    by_kind: dict[str, list[Run]] = {}
    for run in runs:
        by_kind.setdefault(run.kind, []).append(run)
    loaded: dict[str, list[dict]] = {}
    for run in by_kind.get("sl-cai", []):
        loaded[run.name] = records(run, SLCAIRecord)
    for kind in LABEL_KINDS:
        for run in by_kind.get(kind, []):
            loaded[run.name] = records(run, RECORD_MODELS[kind])
    pipelines = [pipeline_stages(root) for root in roots if (root / "pipeline.json").exists()]
    context = {
        "pipelines": pipelines,
        "title": title or "CAI report: " + ", ".join(r.name for r in roots),
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": [{"name": r.name, "kind": r.kind, "path": str(r.path)} for r in runs],
        "constitution": constitution_section([r for k in ("sl-cai",) + LABEL_KINDS for r in by_kind.get(k, [])], loaded, constitution),
        "sl_cai": [sl_cai_section(r, loaded[r.name], max_examples) for r in by_kind.get("sl-cai", [])],
        "labels": [label_section(r, loaded[r.name]) for k in LABEL_KINDS for r in by_kind.get(k, [])],
        "label_evals": [label_eval_section(r) for r in by_kind.get("label-eval", [])],
        "training": [training_section(r) for k in TRAIN_KINDS for r in by_kind.get(k, [])],
        "evaluations": [eval_section(r) for r in by_kind.get("eval-winrate", [])],
        "other": [r.name + f" ({r.kind})" for r in runs if r.kind not in ("sl-cai", "label-eval", "eval-winrate", "pairs") + LABEL_KINDS + TRAIN_KINDS],
    }
    shown = {
        "constitution": [c["ref"] for c in (context["constitution"] or {}).get("constitutions", [])],
        "sl-cai": [s["name"] for s in context["sl_cai"]],
        "labels": [s["name"] for s in context["labels"] + context["label_evals"]],
        "training": [s["name"] for s in context["training"]],
        "evaluation": [s["name"] for s in context["evaluations"]],
    }
    return render_page("report.html.j2", **context), shown


def pipeline_stages(root: Path) -> dict[str, Any]:
    """The stages of a `cai run` root from ROOT/pipeline.json: command, done, start and end times."""
    from .discover import read_json

    state = read_json(root / "pipeline.json")
    stages = state.get("stages") if isinstance(state, dict) else None
    if not isinstance(stages, dict):
        raise ReportError(f"{root / 'pipeline.json'}: stages: expected an object of stage name → state")
    return {"root": root.name, "stages": [{"name": name, "command": str(st.get("command", "")), "done": bool(st.get("done")),
                                           "started": st.get("started"), "finished": st.get("finished")}
                                          for name, st in stages.items() if isinstance(st, dict)]}


def write_report(roots: Iterable[str | os.PathLike], out: str | os.PathLike, **options: Any) -> dict[str, list[str]]:
    """Render the report for ``roots`` into ``out`` (written whole, then renamed); returns what each section shows."""
    html, shown = build_report(roots, **options)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return shown

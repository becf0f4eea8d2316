"""Configs of `cai label preference|binary|score|eval` (options generated from them; ``--config
file.yaml`` on each; the resolved config is saved in the run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jobs.config import opt
from jobs.options import EngineOptions, ExecutorOptions

DEFAULT_MODEL = "smollm2-135m"
OVERWRITE_HELP = ("Start over: replace this run (only files a run owns; other files stay) once the new run has written its "
                  "first records.")


class LabelEngineOptions(EngineOptions):
    """Engine options of the label commands (the judging model is ``--labeler-model``)."""

    model_field = "labeler_model"

    labeler_model: str = opt(DEFAULT_MODEL, "Labeler model: the embedded smollm2-135m, a Hugging Face id or a local folder.")
    tokenizer: Optional[str] = opt(None, "--engine openai: local tokenizer (HF id or folder) for chat templates (--template chat).")
    batch_size: int = opt(32, "Prompts scored per forward pass.")
    seed: int = opt(0, "Seeds principle draws (per comparison id).")
    quiet: bool = opt(False, "No progress bar.", short="-q", transient=True)


class LabelRunConfig(LabelEngineOptions, ExecutorOptions):
    """The label commands that write a run directory (also: where their batches run)."""

    out: Path = opt(..., "Run directory for records.jsonl, exports/ and summary.json.", short="-o", required=True)
    constitution: str = opt("harmless", "Library name or path of the constitution; one feedback principle is drawn per item.")
    overwrite: bool = opt(False, OVERWRITE_HELP, transient=True)


class PreferenceConfig(LabelRunConfig):
    """Options of `cai label preference`."""

    pairs: Path = opt(..., "A pair run directory (cai generate pairs) or a JSONL file of {prompt, chosen, rejected} / "
                      "{prompt, response_a, response_b}.", positional=True, required=True)
    template: str = opt("cai_mc", "cai_mc (Anthropic-style options), rlaif (Preferred Response=), chat (instruct models).")
    ensemble: int = opt(1, "Principles per comparison: 1 = one drawn per comparison; K = average of K distinct ones.")
    single_order: bool = opt(False, "Score only in the order given (faster, keeps position bias).")
    cot: bool = opt(False, "Generate a rationale before scoring; probabilities are clamped.")
    cot_clamp: str = opt("0.4,0.6", "Clamp range for --cot probabilities.")
    cot_max_tokens: int = opt(128, "Rationale length limit for --cot.")
    all_pairs: bool = opt(False, "With >2 responses per prompt, label every pair (default: the first two).")
    min_margin: float = opt(0.0, "Exports drop near-ties: |p - 0.5| < margin.")


SINGLE_INPUTS_HELP = "A pair run directory (each response separately) or a JSONL file of {prompt, response} / {prompt, completion}."


class BinaryConfig(LabelRunConfig):
    """Options of `cai label binary`."""

    inputs: Path = opt(..., SINGLE_INPUTS_HELP, positional=True, required=True)
    question: Optional[str] = opt(None, "Judge every response by this standard instead of the constitution's principles.")
    template: str = opt("binary", "Template name (labelers/templates/binary.j2, or the constitution's override).")
    min_margin: float = opt(0.0, "The KTO export drops responses with |p_desirable - 0.5| < margin.")


class ScoreConfig(LabelRunConfig):
    """Options of `cai label score`."""

    inputs: Path = opt(..., SINGLE_INPUTS_HELP, positional=True, required=True)
    question: Optional[str] = opt(None, "Rate every response by this standard instead of the constitution's principles.")
    template: str = opt("score", "Template name (labelers/templates/score.j2, or the constitution's override).")


class EvalConfig(LabelEngineOptions):
    """Options of `cai label eval`."""

    gold: Path = opt(..., "Gold comparisons: {prompt, chosen, rejected} lines and/or Anthropic multiple-choice lines "
                     "{prompt, corrects, incorrects}.", required=True)
    constitution: str = opt("harmless", "Feedback principles for prompt/chosen/rejected gold lines.")
    template: str = opt("cai_mc", "Template for prompt/chosen/rejected gold lines (MC lines are scored as given).")
    out: Optional[Path] = opt(None, "One JSON line per comparison, in input order: p_first_raw, p_first_swapped, p_first_avg, gold_first.")
    plot: Optional[Path] = opt(None, "Write a reliability diagram (PNG).")
    metrics_out: Optional[Path] = opt(None, "Write the metrics as JSON.", flag="--metrics")

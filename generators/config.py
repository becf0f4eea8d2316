"""Configs of `cai generate sl-cai`, `cai generate pairs` and `cai export` (options generated from them;
``--config file.yaml`` on each; the resolved config is saved in the run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jobs.config import CommandConfig, opt
from jobs.options import EngineOptions, ExecutorOptions

DEFAULT_MODEL = "smollm2-135m"
ON_LONG_HELP = ("transformers/vllm: a prompt too long for the model's context with --max-new-tokens is cut to its last tokens "
                "(truncate, the default; the record says so), skipped (listed in OUT/skipped.jsonl) or an error.")
OVERWRITE_HELP = ("Start over: replace this run (only files a run owns; other files stay) once the new run has written its "
                  "first records.")


class GenerateEngineOptions(EngineOptions):
    """Engine options of the generate commands (the policy model is ``--model``)."""

    model: str = opt(DEFAULT_MODEL, "Model: the embedded smollm2-135m, a local folder, a Hugging Face id, or (for openai) the served model name.")
    on_long: Optional[str] = opt(None, ON_LONG_HELP)
    dtype: Optional[str] = opt(None, "Model dtype: auto, float32, bfloat16, float16.")
    trust_remote_code: bool = opt(False, "Allow model code from the model folder (off by default).")


class GenerateConfig(GenerateEngineOptions, ExecutorOptions):
    """What both generate commands share: prompts in, a run directory out, sampling, where the batches run."""

    prompts: Path = opt(..., "Prompt file: .jsonl (prompt / messages / hh-rlhf chosen), .txt (one per line) or an hh-rlhf transcript .txt.",
                        short="-p", required=True)
    out: Path = opt(..., "Run directory (created; rerun the same command to resume).", short="-o", required=True)
    max_new_tokens: int = opt(256, "Token limit of every generated turn.")
    top_p: float = opt(1.0, "Nucleus sampling threshold.")
    seed: int = opt(0, "Seed of the principle draws and of sampling.")
    batch_size: int = opt(8, "Requests per forward batch; a chunk of 4 × batch-size prompts is generated and saved together.")
    limit: Optional[int] = opt(None, "Use only the first N prompts.")
    skip_bad_lines: bool = opt(False, "Set malformed prompt lines aside (in --rejects) instead of stopping.")
    rejects: Optional[Path] = opt(None, "Where skipped lines go (default: <prompts>.rejects.jsonl).")
    overwrite: bool = opt(False, OVERWRITE_HELP, transient=True)
    quiet: bool = opt(False, "No progress bar.", short="-q", transient=True)


class SLCAIConfig(GenerateConfig):
    """Options of `cai generate sl-cai`."""

    constitution: str = opt(..., "Constitution YAML/JSON file, or the name of a shipped one (e.g. harmless).", short="-c", required=True)
    rounds: int = opt(1, "Critique→revision rounds per prompt (the paper used 4).")
    revision_only: bool = opt(False, "Skip the critique turn: ask for the revision directly.")
    few_shot: Optional[int] = opt(None, "Show only the first N few-shot examples of the constitution (default all; each costs prompt tokens in every request).")
    temperature: float = opt(0.7, "Sampling temperature (0 = greedy). The paper sampled at 1.0; 0.7 keeps small models coherent.")
    show_example: bool = opt(False, "Print one prompt with its answer, critique and revision at the end.", transient=True)


class PairsConfig(GenerateConfig):
    """Options of `cai generate pairs`."""

    n: int = opt(2, "Responses sampled per prompt.")
    system_prompt: Optional[str] = opt(None, "A system message put before every prompt.")
    temperature: float = opt(1.0, "Sampling temperature; > 0 so the N responses differ.")


class ExportConfig(CommandConfig):
    """Options of `cai export`."""

    run_dir: Path = opt(..., "The --out folder of a `cai generate` run.", positional=True, required=True)
    all_rounds: bool = opt(False, "SL-CAI: one SFT row per round's revision (as the paper trained), not only the final one.")

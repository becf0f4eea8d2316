"""Configs of `cai eval winrate` and `cai run` (options generated from them; ``--config file.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jobs.config import CommandConfig, ConfigError, opt
from jobs.options import ENGINE_HELP, EngineOptions

DEFAULT_JUDGE = "smollm2-135m"


class WinrateConfig(EngineOptions):
    """Options of `cai eval winrate`. ``engine`` / ``base_url`` / ``engine_opt`` / ``device`` are the
    policies' back end; the ``judge_*`` fields are the AI labeler's."""

    model_a: str = opt(..., "Baseline policy A (e.g. the SFT model): a folder, a Hugging Face id, smollm2-135m, or (openai) a served name.",
                       required=True)
    model_b: str = opt(..., "Policy B, judged against A (e.g. the PPO or DPO model).", required=True)
    prompts: Path = opt(..., "Held-out prompt file: .jsonl (prompt / messages), .txt (one per line) or an hh-rlhf transcript.",
                        short="-p", required=True)
    out: Path = opt(..., "Run directory: a/ and b/ (answers), labels/ (AI labeler), pm/ (PM scores), summary.json. "
                    "Rerun the same command to resume.", short="-o", required=True)
    judge: str = opt(DEFAULT_JUDGE, "AI labeler model comparing each pair (both orders) under the constitution's feedback principles.")
    constitution: str = opt("harmless", "Library name or path of the constitution whose feedback principles the judge uses.", short="-c")
    judge_pm: Optional[str] = opt(None, "Also judge with a preference model (`cai train pm` output): p = σ(r_B − r_A).")
    ensemble: int = opt(1, "Feedback principles per comparison (1 = one drawn per comparison; 0 = every principle).")
    template: str = opt("cai_mc", "Labeler template: cai_mc, rlaif or chat.")
    tie_margin: float = opt(0.05, "A comparison is a tie when |p − 0.5| < this (p = P(B better than A)).")
    limit: Optional[int] = opt(None, "Use only the first N prompts.")
    max_new_tokens: int = opt(128, "Token limit of each policy answer.")
    temperature: float = opt(0.0, "Policy sampling temperature (0 = greedy: the same answer on every rerun).")
    top_p: float = opt(1.0, "Nucleus sampling threshold of the policies.")
    seed: int = opt(0, "Seed of sampling and of the principle draws.")
    batch_size: int = opt(8, "Policy requests per batch (transformers: one forward batch).")
    dtype: Optional[str] = opt(None, "Policy dtype: auto, float32, bfloat16, float16.")
    on_long: Optional[str] = opt(None, "A prompt too long for a policy's context: truncate (default), skip or error.")
    trust_remote_code: bool = opt(False, "Allow model code from the model folders (off by default).")
    judge_engine: str = opt("transformers", "Judge back end: " + ENGINE_HELP.split(": ", 1)[1])
    judge_base_url: Optional[str] = opt(None, "Server URL for --judge-engine openai.", redact="url")
    judge_engine_opt: list[str] = opt([], "KEY=VALUE passed to the judge engine's constructor (repeatable).", redact="options")
    judge_batch_size: int = opt(32, "Judge prompts scored per forward pass (also the PM's batch).")
    overwrite: bool = opt(False, "Start over: replace the answers, labels and scores in OUT.", transient=True)
    quiet: bool = opt(False, "No progress bars.", short="-q", transient=True)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.ensemble < 0:
            raise ConfigError(f"--ensemble must be ≥ 0 (0 = every principle), got {self.ensemble}")
        if not 0 <= self.tie_margin < 0.5:
            raise ConfigError(f"--tie-margin must be in [0, 0.5), got {self.tie_margin}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be ≥ 1, got {self.limit}")
        if self.batch_size < 1 or self.judge_batch_size < 1:
            raise ConfigError("--batch-size and --judge-batch-size must be ≥ 1")


class RunConfig(CommandConfig):
    """Options of `cai run`."""

    pipeline: Path = opt(..., "Pipeline YAML: a list of stages, each {name, command, config} (see pipelines/).",
                         positional=True, required=True, metavar="PIPELINE.yaml")
    out: Path = opt(..., "Root folder: each stage runs in ROOT/<stage>/; ROOT/pipeline.json keeps the stages' fingerprints.",
                    short="-o", required=True)
    from_stage: Optional[str] = opt(None, "Rerun this stage even if it is up to date, and go on from it; earlier stages are used "
                                    "as they are (they must have finished).", flag="--from", metavar="STAGE")
    until: Optional[str] = opt(None, "Stop after this stage.", metavar="STAGE")
    dry_run: bool = opt(False, "Print the plan (run / resume / skip / rerun, and why) and run nothing.", transient=True)
    quiet: bool = opt(False, "No progress bars in the stages.", short="-q", transient=True)

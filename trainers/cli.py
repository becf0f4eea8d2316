"""`cai train …`: one command per trainer, generated from the trainer's config (``jobs/config.py``).

Every field of the config becomes an option (``lora_r`` → ``--lora-r``; booleans get ``--x/--no-x``;
list fields are repeatable) with the field's help text, so a trainer documents its options once.
Options given on the command line override the ``--config`` YAML file, which overrides the defaults;
the resolved config is written to OUT/config.yaml (loads back with ``--config``).

To add a trainer: define ``class XConfig(TrainConfig)`` in ``trainers/x.py`` (keep torch imports inside
functions there, so ``cai --help`` stays fast) and add one entry to COMMANDS.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

import typer

from jobs.config import ConfigError, config_command, fail, save_config
from trainers.config import CONFIG_FILE
from trainers.dpo import DPOConfig  # config classes only: no torch at import
from trainers.kto import KTOConfig
from trainers.ppo import PPOConfig
from trainers.preference_model import PMConfig
from trainers.sft import SFTConfig

app = typer.Typer(help="Train models: SFT, preference model, DPO, KTO, PPO.", no_args_is_help=True, rich_markup_mode=None)

SFT_HELP = """Supervised fine-tuning on chats (`messages` column); the loss covers assistant turns only.

\b
Examples:
  cai train sft --data runs/slcai/exports/sft.jsonl --model smollm2-135m --out runs/sft
  cai train sft --data revisions.jsonl:0.7 --data helpful.jsonl:0.3 --model smollm2-135m \\
      --out runs/sft-mix --epochs 2 --batch-size 8 --grad-accum 4 --max-length 512 --on-long truncate
  cai train sft --config sft.yaml --lora-r 16          # YAML keys are the option names
  cai train sft ... --no-resume                         # start over instead of continuing OUT/checkpoints

The final model is saved into OUT (from_pretrained(OUT) loads it), with metrics.jsonl and summary.json.
Rerunning the same command continues from the latest checkpoint in OUT/checkpoints.
"""

PM_HELP = """Preference model: a scalar reward head on a causal-LM backbone, trained with the soft-label
Bradley–Terry loss on prompt/chosen/rejected rows (p_chosen = AI label; absent → 1.0).

\b
Examples:
  cai train pm --data runs/prefs/exports/prefs.jsonl --model smollm2-135m --out runs/pm
  cai train pm --data prefs.jsonl --model runs/sft --out runs/pm --eval-fraction 0.1 --lr 1e-5
  cai train pm --config pm.yaml --no-resume

OUT then loads with AutoModelForSequenceClassification.from_pretrained(OUT); the eval split's pairwise
accuracy and calibration (ECE) are in summary.json, the reliability plot in calibration.png.
"""

DPO_HELP = """Direct Preference Optimization on prompt/chosen/rejected rows, with per-example soft labels
(p_chosen = the AI labeler's P(chosen ≻ rejected); absent → 1.0). Reference log-probs are computed once
before training with the initial policy (or --ref-model) and cached in OUT: no second model in memory.

\b
Examples:
  cai train dpo --data runs/prefs/exports/prefs.jsonl --model smollm2-135m --out runs/dpo
  cai train dpo --data prefs.jsonl --model runs/sft --out runs/dpo --beta 0.1 --lr 5e-7 \\
      --batch-size 4 --grad-accum 8 --max-length 512 --on-long truncate
  cai train dpo --data prefs.jsonl --model runs/sft --ref-model smollm2-135m --out runs/dpo-ref
  cai train dpo --data prefs.jsonl --model smollm2-135m --lora-r 16 --ref-mode live --out runs/dpo-lora

Metrics (OUT/metrics.jsonl): loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracy
(and eval_… on the eval split). Rerunning the same command continues from OUT/checkpoints.
"""

KTO_HELP = """Kahneman–Tversky Optimization on prompt/completion/label rows (label true = desirable), the
toolkit's binary-label export. The KL reference point is estimated from mismatched prompt/completion
pairs; their reference log-probs are precomputed with the others.

\b
Examples:
  cai train kto --data runs/binary/exports/kto.jsonl --model smollm2-135m --out runs/kto
  cai train kto --data kto.jsonl --model runs/sft --out runs/kto --balance --beta 0.1 --lr 5e-7
  cai train kto --data kto.jsonl --model runs/sft --desirable-weight 1.0 --undesirable-weight 1.33 --out runs/kto

Metrics (OUT/metrics.jsonl): loss, kl (the reference point z0), rewards/desirable, rewards/undesirable,
rewards/margins (and eval_… on the eval split). Rerunning the same command continues from OUT/checkpoints.
"""

PPO_HELP = """Online RL against a preference model or a direct AI reward: PPO (GAE, value head, clipped
surrogate, per-token KL penalty to the initial policy), RLOO (k samples per prompt, leave-one-out
baseline, sequence-level KL penalty, no value head) or GRPO (k samples per prompt, group-normalised
advantages, k3 KL to the reference in the loss; --kl-coef 0 loads no reference).

\b
--reward is one of:
  pm:PATH              a preference model from `cai train pm` (score = logit at the last token)
  ai:LABELER_MODEL     d-RLAIF: the labeler's expected 1–10 rating, rescaled to [-1, 1]
  ai:MODEL@URL         the same judge behind an OpenAI-compatible server (e.g. vllm serve)
  py:module:function   your function(prompts: list[str], responses: list[str]) -> list[float]

\b
Examples:
  cai train ppo --prompts data/red_team_prompts.jsonl --model runs/sft --reward pm:runs/pm --out runs/ppo
  cai train ppo --prompts prompts.txt --model smollm2-135m --reward ai:smollm2-135m --out runs/rlaif \\
      --iterations 50 --batch-size 8 --max-new-tokens 64 --kl-coef 0.05 --target-kl 6
  cai train ppo --prompts prompts.jsonl --model runs/sft --reward py:my_rewards:brevity --algo rloo \\
      --rloo-k 4 --out runs/rloo --lora-r 16 --lr 1e-4
  cai train ppo --prompts prompts.jsonl --model runs/sft --reward pm:runs/pm --reward py:my_rewards:brevity \\
      --reward-weight 1 --reward-weight 0.2 --algo grpo --group-size 8 --rollout-engine vllm --out runs/grpo
  cai train ppo --config ppo.yaml --no-resume

OUT gets the final policy + tokenizer (from_pretrained(OUT) loads it), metrics.jsonl (reward, kl,
entropy, clip_fraction, value_loss, response_length, rollout_s / reward_s / logprobs_s / update_s),
samples.jsonl, ppo_curves.png and checkpoints/. Rerunning the same command continues from the latest
checkpoint (policy, value head, optimizer, KL controller, reward statistics and RNG state).
"""

# (command name, config class, "module:function" run lazily, help text)
COMMANDS: list[tuple[str, type, str, str]] = [
    ("sft", SFTConfig, "trainers.sft:train_sft", SFT_HELP),
    ("pm", PMConfig, "trainers.preference_model:train_preference_model", PM_HELP),
    ("dpo", DPOConfig, "trainers.dpo:train_dpo", DPO_HELP),
    ("kto", KTOConfig, "trainers.kto:train_kto", KTO_HELP),
    ("ppo", PPOConfig, "trainers.ppo:train_ppo", PPO_HELP),
]

NO_RESUME = inspect.Parameter("no_resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                              default=typer.Option(False, "--no-resume", help="ignore checkpoints in OUT and start from step 0 (same as --resume never)"))


def _no_resume(values: dict) -> None:
    if values.pop("no_resume"):
        values["resume"] = "never"


def _is_main_process() -> bool:
    """Under accelerate/torchrun every rank runs this command; only rank 0 writes."""
    return int(os.environ.get("RANK", "0")) == 0


def _runner(target: str, help_text: str):
    """``run(config)``: save OUT/config.yaml, call the trainer ``target`` ("module:func"), print its summary."""

    def run(config: Any) -> None:
        from trainers.data import DataError

        module_name, _, function_name = target.partition(":")
        try:
            if _is_main_process():
                save_config(config, Path(config.out) / CONFIG_FILE)
            summary = getattr(importlib.import_module(module_name), function_name)(config)
        except (ConfigError, DataError) as exc:
            raise fail(str(exc)) from None
        if _is_main_process():
            typer.echo(json.dumps(_brief(summary), indent=2, default=str))

    run.__doc__ = help_text
    return run


def _brief(value: Any) -> Any:
    """The summary without its bulky parts (config, data mix, tables); OUT/summary.json has them all."""
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items() if k not in ("config", "data", "length", "calibration_table")}
    return value


for _name, _config_cls, _target, _help in COMMANDS:
    app.command(_name, help=_help)(config_command(_config_cls, _runner(_target, _help), extra_params=(NO_RESUME,), prepare=_no_resume))

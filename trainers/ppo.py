"""Online RL against a preference model or a direct AI reward: PPO (with a value head) or RLOO.

One iteration, top to bottom (``train_ppo``):

1. rollout — take the next ``batch_size`` prompts (RLOO: each ``rloo_k`` times), sample one response
   each from the current policy, and score its tokens with the policy and the reference
   (``trainers/rollout.py``);
2. reward — score every (prompt, response) with the reward function (``trainers/rewards.py``), subtract
   ``missing_eos_penalty`` from responses cut at ``max_new_tokens``, normalise by the running mean/std;
3. advantages — PPO: per-token reward ``−β·(log π − log π_ref)`` plus the score at the last token, GAE
   over the value head's estimates, whitened; RLOO: sequence reward ``score − β·Σ(log π − log π_ref)``,
   advantage ``r_i − mean of the other k − 1 samples`` on every token (``trainers/ppo_update.py``);
4. update — ``ppo_epochs`` passes of shuffled minibatches: clipped surrogate (+ clipped value loss)
   (``trainers/ppo_update.py``; the losses themselves are in ``trainers/losses.py``);
5. β follows the KL controller (fixed, or adaptive towards ``target_kl``); metrics, samples, plot,
   checkpoint.

The reference policy is a frozen copy of the initial policy, or — with LoRA — the policy itself with its
adapters switched off (no second copy in memory). A "step" in metrics.jsonl and checkpoints is one
iteration. Not done: vLLM rollouts with weight sync (generation uses ``transformers.generate``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import field_validator

from trainers.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint, save_final_model
from trainers.config import ConfigError, TrainBase, opt
from trainers.metrics import MetricsLogger, progress_bar, read_metrics
from trainers.models import (
    disable_dropout,
    load_model_and_tokenizer,
    make_accelerator,
    make_optimizer_and_scheduler,
    model_options,
    set_seed,
)
from trainers.plan import StepPlan

SAMPLES_FILE = "samples.jsonl"
PLOT_FILE = "ppo_curves.png"


class PPOConfig(TrainBase):
    """Options of `cai train ppo`: TrainBase (model, out, optimiser, LoRA, checkpoints) plus these."""

    # what to train, against what
    prompts: list[str] = opt([], "prompt file(s): JSONL rows with `prompt` or `messages`, or plain text, one prompt per line; repeatable", required=True)
    model: str = opt("", "policy to start from: `smollm2-135m` (embedded), a local folder or a cached Hub id (usually your SFT model)", required=True)
    reward: str = opt("", "pm:PATH (preference model from `cai train pm`) | ai:LABELER_MODEL (d-RLAIF 1–10 score) | py:module:function", required=True)
    out: str = opt("", "output folder: final policy + tokenizer, metrics.jsonl, samples.jsonl, ppo_curves.png, checkpoints/", required=True)
    algo: Literal["ppo", "rloo"] = opt("ppo", "ppo (GAE with a value head) | rloo (REINFORCE leave-one-out over rloo_k samples per prompt, no value head)")
    # rollouts
    iterations: int = opt(100, "rollout-and-update iterations")
    batch_size: int = opt(8, "prompts per iteration (RLOO samples each rloo_k times)")
    rloo_k: int = opt(4, "RLOO: samples per prompt (≥ 2)")
    max_new_tokens: int = opt(64, "longest response sampled")
    max_prompt_tokens: int = opt(512, "prompts longer than this keep their last tokens")
    temperature: float = opt(1.0, "sampling temperature (> 0); log-probs are taken at the same temperature")
    missing_eos_penalty: float = opt(0.0, "subtracted from the score of a response that reached max_new_tokens without EOS")
    generation_batch_size: int = opt(32, "sequences generated (and scored by the policy) at once")
    # optimisation (lr, weight_decay, max_grad_norm, LoRA, seed … come from TrainBase)
    ppo_epochs: int = opt(4, "passes over each rollout batch")
    minibatch_size: int = opt(8, "sequences per optimizer step")
    lr_schedule: Literal["constant", "linear", "cosine"] = opt("constant", "learning-rate schedule: constant | linear | cosine")
    warmup_ratio: float = opt(0.0, "fraction of the optimizer steps used for linear warm-up")
    # the algorithm
    kl_coef: float = opt(0.05, "β: weight of the KL(π‖π_ref) penalty (initial value when target_kl is set)")
    target_kl: Optional[float] = opt(None, "adapt β towards this KL per sequence (Ziegler et al.); unset = fixed β")
    kl_horizon: int = opt(10000, "adaptive KL controller horizon, in samples")
    gamma: float = opt(1.0, "PPO: discount γ for GAE")
    lam: float = opt(0.95, "PPO: GAE λ")
    clip_range: float = opt(0.2, "ε of the clipped surrogate: ρ is clipped to [1 − ε, 1 + ε]")
    value_clip_range: float = opt(0.2, "PPO: value updates are clipped to ±this around the rollout's values")
    vf_coef: float = opt(0.1, "PPO: weight of the value loss")
    normalize_rewards: bool = opt(True, "normalise scores by the running mean and std of all scores seen so far")
    whiten_advantages: bool = opt(True, "whiten advantages over each rollout batch")
    separate_value_model: bool = opt(False, "PPO: value head on its own copy of the backbone instead of sharing the policy's")
    # reward options
    reward_batch_size: int = opt(16, "responses scored at once by a pm: or ai: reward")
    ai_principle: Optional[str] = opt(None, "ai: reward: the question the labeler rates each response on")
    constitution: Optional[str] = opt(None, "ai: reward: constitution (name or YAML) whose first feedback principle is the question")
    # run (the rest comes from TrainBase); a step is one iteration
    save_every: int = opt(10, "checkpoint every this many iterations")
    stop_after_steps: Optional[int] = opt(None, "end this run after this many iterations (a checkpoint is saved; rerun to continue)", transient=True)
    sample_every: int = opt(10, "write sample responses to samples.jsonl every this many iterations")
    plot_every: int = opt(10, "refresh ppo_curves.png every this many iterations")

    @field_validator("prompts", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value

    def __post_init__(self) -> None:  # choices (algo, lr_schedule, log_with) are checked by their Literal types
        super().__post_init__()
        for name in ("iterations", "batch_size", "max_new_tokens", "max_prompt_tokens", "ppo_epochs", "minibatch_size",
                     "generation_batch_size", "reward_batch_size", "save_every", "sample_every", "plot_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1; got {getattr(self, name)}")
        if self.algo == "rloo" and self.rloo_k < 2:
            raise ConfigError(f"--rloo-k must be ≥ 2 for RLOO (the baseline is the mean of the other samples); got {self.rloo_k}")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0 (PPO needs the sampling distribution); got {self.temperature}")
        if self.kl_coef < 0 or (self.target_kl is not None and self.target_kl <= 0):
            raise ConfigError("--kl-coef must be ≥ 0 and --target-kl > 0")
        if self.reward.partition(":")[0] not in ("pm", "ai", "py") or not self.reward.partition(":")[2]:
            raise ConfigError(f"--reward {self.reward!r}: expected pm:PATH, ai:LABELER_MODEL or py:module:function")
        if self.separate_value_model and self.algo == "rloo":
            raise ConfigError("--separate-value-model only applies to --algo ppo (RLOO has no value head)")

    @property
    def samples_per_iteration(self) -> int:
        return self.batch_size * (self.rloo_k if self.algo == "rloo" else 1)


# ---------------------------------------------------------------- outputs: samples.jsonl, ppo_curves.png, value head


def _keep_lines_up_to(path: Path, step: int) -> None:
    """Drop the lines of a resumed run's JSONL log written after the checkpoint's step."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:  # a torn last line from a killed run
            continue
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def write_plot(out: str | Path) -> Path | None:
    """OUT/ppo_curves.png: mean reward and KL per iteration, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(out)
    if not records:
        return None
    steps = [r["step"] for r in records]
    fig, (ax_r, ax_k) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_r.plot(steps, [r["reward"] for r in records], label="mean score")
    ax_r.set_ylabel("reward")
    ax_k.plot(steps, [r["kl"] for r in records], color="tab:red", label="KL(π‖π_ref) per sequence")
    ax_k.set_ylabel("KL")
    ax_k.set_xlabel("iteration")
    for ax in (ax_r, ax_k):
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    fig.tight_layout()
    path = Path(out) / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_samples(out: Path, step: int, conversations, roll, scores, n: int = 4) -> None:
    """Append the first ``n`` (prompt, response, score) of an iteration to OUT/samples.jsonl."""
    with open(out / SAMPLES_FILE, "a", encoding="utf-8") as f:
        for i in range(min(n, len(roll))):
            f.write(json.dumps({"step": step, "prompt": conversations[i], "response": roll.response_texts[i],
                                "score": float(scores[i]), "finished": bool(roll.finished[i])}, ensure_ascii=False) + "\n")


def _save_value_head(out: Path, inner) -> None:
    """The PPO value head as OUT/value_head.safetensors, for inspection or reuse (a separate value backbone
    is not saved)."""
    if inner.value_head is None:
        return
    from safetensors.torch import save_file

    weights = {f"value_head.{k}": v.detach().cpu().contiguous() for k, v in inner.value_head.state_dict().items()}
    save_file(weights, str(out / "value_head.safetensors"))


# ---------------------------------------------------------------- training


def train_ppo(config: PPOConfig, reward_fn=None) -> dict:
    """Run (or resume) PPO / RLOO as configured; returns the summary also written to OUT/summary.json.

    ``reward_fn`` (``fn(conversations, responses) -> list[float]``) replaces ``config.reward`` when given
    (the Python API; the CLI always goes through ``config.reward``).
    """
    import torch

    from generators.inputs import PromptFileError, read_prompts
    from trainers.losses import AdaptiveKLController, masked_mean
    from trainers.ppo_update import compute_advantages, ppo_update
    from trainers.rewards import RewardSpecError, RunningMoments, reward_from_config
    from trainers.rollout import PolicyAndValue, ValueHead, eos_token_ids, render_prompt_ids, sample_rollouts, score_rollout

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)
    try:
        items = [item for path in config.prompts for item in read_prompts(path)]
    except PromptFileError as e:
        raise ConfigError(str(e)) from None

    # ---- models: policy (+ value head), reference, reward -------------------------------------------
    policy, tokenizer = load_model_and_tokenizer(config.model, **model_options(config))
    disable_dropout(policy)  # the rollout's log-probs (eval mode) and the update's (train mode) must agree
    accelerator = make_accelerator(config)
    if accelerator.num_processes > 1:  # not done yet: each rank would roll out every prompt and write every file
        raise ConfigError(f"cai train ppo runs in one process for now ({accelerator.num_processes} were launched); "
                          "start it without torchrun / accelerate launch (sft, pm, dpo and kto train on several)")
    reference = None if config.lora_r > 0 else copy.deepcopy(policy).requires_grad_(False).eval()
    value_head = value_backbone = None
    if config.algo == "ppo":
        hidden_size = policy.get_input_embeddings().weight.shape[1]
        value_head = ValueHead(hidden_size)
        if config.separate_value_model:
            from transformers import AutoModel

            from engines.embedded import resolve_model

            value_backbone = AutoModel.from_pretrained(resolve_model(config.model), use_safetensors=True,
                                                       trust_remote_code=config.trust_remote_code)
            disable_dropout(value_backbone)
    model = PolicyAndValue(policy, value_head, value_backbone)
    if reference is not None:
        reference.to(accelerator.device)
    try:
        reward = reward_fn or reward_from_config(config, accelerator.device)
    except RewardSpecError as e:
        raise ConfigError(str(e)) from None
    reward_name = getattr(reward, "name", getattr(reward, "__name__", "custom"))

    prompt_ids = render_prompt_ids(tokenizer, [it.messages for it in items], config.max_prompt_tokens)
    eos_ids, pad_id = eos_token_ids(policy, tokenizer), tokenizer.pad_token_id
    plan = StepPlan(len(items), config.batch_size, 1, config.seed, math.ceil(len(items) / config.batch_size), config.iterations)
    updates_per_iteration = config.ppo_epochs * math.ceil(config.samples_per_iteration / config.minibatch_size)
    optimizer, scheduler = make_optimizer_and_scheduler(model, config, config.iterations * updates_per_iteration)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)

    kl_ctl = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
    moments = RunningMoments()
    start = 0
    if (ckpt := resume_checkpoint(config)) is not None:
        state = load_checkpoint(ckpt, accelerator, model, optimizer, scheduler, config, plan)
        start = state["step"]
        kl_ctl.load_state_dict(state["kl_controller"])
        moments.load_state_dict(state["reward_moments"])
    logger = MetricsLogger(out, config, resume_step=start)
    _keep_lines_up_to(out / SAMPLES_FILE, start)

    bar = progress_bar(config.iterations, initial=start, desc=config.algo, quiet=config.quiet)
    model.train()
    last = start
    for step in range(start, config.iterations):
        # ---- 1. rollout -------------------------------------------------------------------------------
        t0 = time.perf_counter()
        rows = plan.micro_batches(step)[0]
        if config.algo == "rloo":
            rows = [r for r in rows for _ in range(config.rloo_k)]  # the k samples of a prompt side by side
        roll = sample_rollouts(inner.policy, tokenizer, [prompt_ids[r] for r in rows], chunk_size=config.generation_batch_size,
                               max_new_tokens=config.max_new_tokens, temperature=config.temperature, eos_ids=eos_ids, pad_id=pad_id)
        mask = roll.response_mask.float()
        t1 = time.perf_counter()

        # ---- 2. reward ------------------------------------------------------------------------------
        conversations = [items[r].messages for r in rows]
        raw_scores = torch.tensor(reward(conversations, roll.response_texts), dtype=torch.float32)
        if len(raw_scores) != len(rows):
            raise RuntimeError(f"reward {reward_name} returned {len(raw_scores)} scores for {len(rows)} responses")
        scores = raw_scores - config.missing_eos_penalty * (~roll.finished).float()
        t2 = time.perf_counter()

        # ---- 3. advantages ---------------------------------------------------------------------------
        old_logp, ref_logp, old_values, entropy = score_rollout(model, reference, roll, accelerator, config.temperature,
                                                                config.generation_batch_size)
        t3 = time.perf_counter()
        if config.normalize_rewards:
            moments.update(scores)
            scores = moments.normalize(scores)
        beta = kl_ctl.value
        advantages, returns, kl = compute_advantages(config, scores, old_logp, ref_logp, old_values, mask, beta)
        seq_kl = kl.sum(-1)

        # ---- 4. update ------------------------------------------------------------------------------
        stats, lr = ppo_update(model, optimizer, scheduler, accelerator, roll, mask, old_logp, old_values, advantages, returns, config)
        t4 = time.perf_counter()

        # ---- 5. KL controller, logs, checkpoint -----------------------------------------------------
        kl_ctl.update(seq_kl.mean().item(), len(rows))
        metrics = {
            "reward": raw_scores.mean().item(), "reward_std": raw_scores.std(unbiased=False).item(),
            "kl": seq_kl.mean().item(), "kl_coef": beta, "entropy": masked_mean(entropy, mask).item(),
            "response_length": mask.sum(-1).mean().item(), "eos_fraction": roll.finished.float().mean().item(),
            **stats,
            "lr": lr, "rollout_s": t1 - t0, "reward_s": t2 - t1, "logprobs_s": t3 - t2,
            "update_s": t4 - t3, "samples_per_s": len(rows) / (t4 - t0),
        }
        logger.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
        if (step + 1) % config.sample_every == 0 or step == 0:
            _write_samples(out, step + 1, conversations, roll, raw_scores)
        last = step + 1
        stopping = config.stop_after_steps is not None and last - start >= config.stop_after_steps
        if last % config.save_every == 0 or stopping or last == config.iterations:
            save_checkpoint(out, last, accelerator, model, optimizer, scheduler, config, plan,
                            extra={"kl_controller": kl_ctl.state_dict(), "reward_moments": moments.state_dict()})
        if last % config.plot_every == 0:
            write_plot(out)
        if stopping:
            break
    bar.close()
    logger.close()
    write_plot(out)
    records = read_metrics(out)
    summary = {
        "algo": config.algo, "model": config.model, "reward": reward_name, "iterations_done": last,
        "finished": last >= config.iterations,
        "first_reward": records[0]["reward"] if records else None, "last_reward": records[-1]["reward"] if records else None,
        "last_kl": records[-1]["kl"] if records else None, "kl_coef": kl_ctl.value,
    }
    if last >= config.iterations:
        _save_value_head(out, inner)
        save_final_model(out, accelerator, inner.policy, tokenizer, summary=summary)
    return summary


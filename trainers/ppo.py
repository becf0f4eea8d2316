"""Online RL against a preference model or a direct AI reward: PPO (with a value head), RLOO or GRPO.

One iteration, top to bottom (``train_ppo``):

1. rollout — take the next ``batch_size`` prompts (RLOO: each ``rloo_k`` times, GRPO: ``group_size`` times),
   sample one response each from the current policy — with ``transformers.generate``, or with an in-process
   vLLM engine holding a copy of the policy's weights (``--rollout-engine vllm``, ``trainers/vllm_rollout.py``)
   — and score its tokens with the policy and the reference (``trainers/rollout.py``);
2. reward — score every (prompt, response) with the reward function(s) (``trainers/rewards.py``; several are
   weighted and summed), subtract ``missing_eos_penalty`` from responses cut at ``max_new_tokens``,
   normalise by the running mean/std (PPO, RLOO);
3. advantages — PPO: per-token reward ``−β·(log π − log π_ref)`` plus the score at the last token, GAE
   over the value head's estimates, whitened; RLOO: sequence reward ``score − β·Σ(log π − log π_ref)``,
   advantage ``r_i − mean of the other k − 1 samples`` on every token; GRPO: ``(r_i − mean_g) / std_g``
   within each group of k (``--no-scale-rewards``: no division, Dr. GRPO) (``trainers/ppo_update.py``).
   With vLLM rollouts the trainer's log-probs are the ones trained on; their mismatch with vLLM's is
   logged, and truncated importance weights may multiply the advantages (``--tis-cap``);
4. update — ``ppo_epochs`` passes of shuffled minibatches: clipped surrogate (+ clipped value loss; GRPO:
   + β·k3 KL to the reference in the loss) (``trainers/ppo_update.py``; the losses are in
   ``trainers/losses.py``); with vLLM, the new weights are then pushed into the engine;
5. β follows the KL controller (fixed, or adaptive towards ``target_kl``); metrics, samples, plot,
   checkpoint.

The reference policy is a frozen copy of the initial policy, or — with LoRA — the policy itself with its
adapters switched off (no second copy in memory); GRPO with β = 0 loads none. A "step" in metrics.jsonl and
checkpoints is one iteration. Under torchrun / accelerate launch each rank rolls out its share of the
prompts and the batch statistics and the update's minibatches span every rank (``trainers/rl_distributed.py``).
GRPO is ``--algo grpo`` of this command, not a command of its own: it shares
every option of the rollout, reward, checkpoint and resume machinery with PPO and RLOO.
"""

from __future__ import annotations

import copy
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
from trainers.ppo_outputs import SAMPLES_FILE, keep_lines_up_to, save_value_head, write_plot, write_samples


class PPOConfig(TrainBase):
    """Options of `cai train ppo`: TrainBase (model, out, optimiser, LoRA, checkpoints) plus these."""

    # what to train, against what
    prompts: list[str] = opt([], "prompt file(s): JSONL rows with `prompt` or `messages`, or plain text, one prompt per line; repeatable", required=True)
    model: str = opt("", "policy to start from: `smollm2-135m` (embedded), a local folder or a cached Hub id (usually your SFT model)", required=True)
    reward: list[str] = opt([], "pm:PATH (preference model from `cai train pm`) | ai:LABELER_MODEL (d-RLAIF 1–10 score) | ai:MODEL@http://HOST:PORT/v1 (the same, served by an OpenAI-compatible server) | py:module:function; repeat to sum several", required=True)
    reward_weight: list[float] = opt([], "weight of each --reward in the sum, in the same order (default 1 each)")
    out: str = opt("", "output folder: final policy + tokenizer, metrics.jsonl, samples.jsonl, ppo_curves.png, checkpoints/", required=True)
    algo: Literal["ppo", "rloo", "grpo"] = opt("ppo", "ppo (GAE with a value head) | rloo (REINFORCE leave-one-out over rloo_k samples per prompt, no value head) | grpo (group-normalised advantages over group_size samples per prompt, k3 KL in the loss)")
    # rollouts
    iterations: int = opt(100, "rollout-and-update iterations")
    batch_size: int = opt(8, "prompts per iteration (RLOO samples each rloo_k times)")
    rloo_k: int = opt(4, "RLOO: samples per prompt (≥ 2)")
    group_size: int = opt(4, "GRPO: samples per prompt (≥ 2), whose rewards are normalised within the group")
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
    scale_rewards: bool = opt(True, "GRPO: divide each group's centred rewards by its std (--no-scale-rewards: Dr. GRPO, centre only)")
    loss_aggregation: Literal["token", "sequence"] = opt("token", "GRPO: average the loss over all tokens of the batch (token) or per sequence first (sequence, the original GRPO)")
    separate_value_model: bool = opt(False, "PPO: value head on its own copy of the backbone instead of sharing the policy's")
    # reward options
    reward_batch_size: int = opt(16, "responses scored at once by a pm: or ai: reward")
    reward_concurrency: int = opt(8, "served ai:MODEL@URL reward: requests in flight at once")
    reward_tokenizer: Optional[str] = opt(None, "served ai:MODEL@URL reward: the judge's tokenizer (HF id or folder) for its chat template; default MODEL")
    ai_principle: Optional[str] = opt(None, "ai: reward: the question the labeler rates each response on")
    constitution: Optional[str] = opt(None, "ai: reward: constitution (name or YAML) whose first feedback principle is the question")
    # run (the rest comes from TrainBase); a step is one iteration
    save_every: int = opt(10, "checkpoint every this many iterations")
    stop_after_steps: Optional[int] = opt(None, "end this run after this many iterations (a checkpoint is saved; rerun to continue)", transient=True)
    sample_every: int = opt(10, "write sample responses to samples.jsonl every this many iterations")
    plot_every: int = opt(10, "refresh ppo_curves.png every this many iterations")

    # rollouts on vLLM (trainers/vllm_rollout.py)
    rollout_engine: Literal["transformers", "vllm"] = opt("transformers", "who samples the rollouts: transformers (generate on the policy) | vllm (an in-process vLLM LLM, the policy's weights pushed in after each update)")
    vllm_gpu_memory_utilization: Optional[float] = opt(None, "vllm: share of the GPU memory vLLM may take (default 0.3: the trainer needs the rest); CPU build: share of the RAM for its KV cache (default 0.02)")
    vllm_max_model_len: Optional[int] = opt(None, "vllm: context length (default max_prompt_tokens + max_new_tokens)")
    tis_cap: Optional[float] = opt(None, "vllm: truncated importance sampling: weight each token by min(π_trainer / π_vllm, cap); unset = off")
    tis_threshold: float = opt(0.0, "vllm: apply --tis-cap only in iterations whose mean |log π_trainer − log π_vllm| per token exceeds this")

    @field_validator("prompts", "reward", mode="before")
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
        for spec in self.reward:
            if spec.partition(":")[0] not in ("pm", "ai", "py") or not spec.partition(":")[2]:
                raise ConfigError(f"--reward {spec!r}: expected pm:PATH, ai:LABELER_MODEL, ai:MODEL@URL or py:module:function")
        if self.reward_weight and len(self.reward_weight) != len(self.reward):
            raise ConfigError(f"--reward-weight given {len(self.reward_weight)} times for {len(self.reward)} --reward; give one per reward, in order")
        if self.algo == "grpo" and self.group_size < 2:
            raise ConfigError(f"--group-size must be ≥ 2 for GRPO (advantages are relative to the group); got {self.group_size}")
        if self.algo == "grpo" and self.kl_coef == 0 and self.target_kl is not None:
            raise ConfigError("--target-kl needs --kl-coef > 0 (the adaptive controller scales β; with β = 0 no reference is loaded)")
        if self.reward_concurrency < 1 or (self.tis_cap is not None and self.tis_cap <= 0) or self.tis_threshold < 0:
            raise ConfigError("--reward-concurrency must be ≥ 1, --tis-cap > 0 and --tis-threshold ≥ 0")
        if self.separate_value_model and self.algo == "rloo":
            raise ConfigError("--separate-value-model only applies to --algo ppo (RLOO has no value head)")

    @property
    def samples_per_prompt(self) -> int:
        return {"rloo": self.rloo_k, "grpo": self.group_size}.get(self.algo, 1)

    @property
    def samples_per_iteration(self) -> int:
        return self.batch_size * self.samples_per_prompt

    @property
    def needs_reference(self) -> bool:
        """GRPO with β = 0 has no KL term: no reference model is loaded (nor scored)."""
        return not (self.algo == "grpo" and self.kl_coef == 0)


# ---------------------------------------------------------------- training


def train_ppo(config: PPOConfig, reward_fn=None) -> dict:
    """Run (or resume) PPO / RLOO / GRPO as configured; returns the summary also written to OUT/summary.json.

    ``reward_fn`` (``fn(conversations, responses) -> list[float]``) replaces ``config.reward`` when given
    (the Python API; the CLI always goes through ``config.reward``).
    """
    import torch

    from generators.inputs import PromptFileError, read_prompts
    from trainers.distributed import record_rows
    from trainers.losses import AdaptiveKLController
    from trainers.ppo_update import compute_advantages, ppo_update
    from trainers.rewards import RewardSpecError, RunningMoments, reward_from_config
    from trainers.rl_distributed import iteration_metrics, my_prompts, update_moments
    from trainers.rollout import PolicyAndValue, ValueHead, eos_token_ids, render_prompt_ids, sample_rollouts, score_rollout
    from trainers.vllm_rollout import logprob_mismatch

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
    world, main = accelerator.num_processes, accelerator.is_main_process
    if world > 1 and config.rollout_engine == "vllm":
        raise ConfigError(f"--rollout-engine vllm runs in one process for now ({world} were launched); "
                          "use --rollout-engine transformers under torchrun / accelerate launch")
    # LoRA: the reference is the policy with its adapters off (None); GRPO with β = 0: no reference at all
    reference = None if config.lora_r > 0 or not config.needs_reference else copy.deepcopy(policy).requires_grad_(False).eval()
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
    if world > 1:  # every rank samples its own prompts: give each its own random stream (checkpointed per rank)
        torch.manual_seed(config.seed * 1_000_003 + accelerator.process_index)
    inner = accelerator.unwrap_model(model)

    sampler = None
    if config.rollout_engine == "vllm":
        from trainers.vllm_rollout import VLLMRollout

        sampler = VLLMRollout(config, tokenizer, eos_ids, pad_id, getattr(policy.config, "max_position_embeddings", None))
    kl_ctl = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
    moments = RunningMoments()
    start = 0
    if (ckpt := resume_checkpoint(config)) is not None:
        state = load_checkpoint(ckpt, accelerator, model, optimizer, scheduler, config, plan)
        start = state["step"]
        kl_ctl.load_state_dict(state["kl_controller"])
        moments.load_state_dict(state["reward_moments"])
    if sampler is not None and start > 0:  # vLLM loaded the initial weights; the checkpoint's go in now
        sampler.sync(inner.policy)
    logger = MetricsLogger(out, config, resume_step=start, main=main)
    if main:
        keep_lines_up_to(out / SAMPLES_FILE, start)

    bar = progress_bar(config.iterations, initial=start, desc=config.algo, quiet=config.quiet)
    model.train()
    last = start
    for step in range(start, config.iterations):
        # ---- 1. rollout -------------------------------------------------------------------------------
        t0 = time.perf_counter()
        rows = my_prompts(plan.micro_batches(step)[0], accelerator)  # this rank's share of the iteration's prompts
        record_rows(accelerator, step + 1, [(rows, True)])  # only with CAI_DEBUG_ROWS_DIR set (a test hook)
        rows = [r for r in rows for _ in range(config.samples_per_prompt)]  # RLOO / GRPO: the k samples of a prompt side by side
        sampler_logp = None
        if sampler is None:
            roll = sample_rollouts(inner.policy, tokenizer, [prompt_ids[r] for r in rows], chunk_size=config.generation_batch_size,
                                   max_new_tokens=config.max_new_tokens, temperature=config.temperature, eos_ids=eos_ids, pad_id=pad_id)
        else:
            roll, sampler_logp = sampler.generate([prompt_ids[r] for r in rows], seed=config.seed * 1_000_003 + step * len(rows))
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
        old_logp, ref_logp, old_values, entropy = score_rollout(inner, reference, roll, accelerator, config.temperature,
                                                                config.generation_batch_size, with_reference=config.needs_reference)
        t3 = time.perf_counter()
        if config.normalize_rewards and config.algo != "grpo":  # GRPO normalises within each group instead
            update_moments(moments, scores, accelerator)
            scores = moments.normalize(scores)
        beta = kl_ctl.value
        advantages, returns, kl = compute_advantages(config, scores, old_logp, ref_logp, old_values, mask, beta, accelerator)
        seq_kl = kl.sum(-1)
        mismatch = {}
        if sampler_logp is not None:  # vLLM sampled; the trainer's own log-probs are the ones trained on
            mismatch, weights = logprob_mismatch(old_logp, sampler_logp, mask, config.tis_cap, config.tis_threshold)
            if weights is not None:
                advantages = advantages * weights

        # ---- 4. update ------------------------------------------------------------------------------
        stats, lr = ppo_update(model, optimizer, scheduler, accelerator, roll, mask, old_logp, old_values, advantages, returns, config,
                               ref_logp=ref_logp, beta=beta, step=step)
        t4 = time.perf_counter()
        if sampler is not None:  # the next rollout samples from the updated policy
            mismatch["weight_sync_s"] = sampler.sync(inner.policy)

        # ---- 5. KL controller, logs, checkpoint -----------------------------------------------------
        means = iteration_metrics(accelerator, raw_scores, seq_kl, entropy, mask, roll.finished)  # over all ranks
        samples = means.pop("samples")
        kl_ctl.update(means["kl"], int(samples))
        metrics = {
            **means, "kl_coef": beta, **stats, **mismatch,
            "lr": lr, "rollout_s": t1 - t0, "reward_s": t2 - t1, "logprobs_s": t3 - t2,
            "update_s": t4 - t3, "samples_per_s": samples / (time.perf_counter() - t0),
        }
        logger.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
        if main and ((step + 1) % config.sample_every == 0 or step == 0):
            write_samples(out, step + 1, conversations, roll, raw_scores)
        last = step + 1
        stopping = config.stop_after_steps is not None and last - start >= config.stop_after_steps
        if last % config.save_every == 0 or stopping or last == config.iterations:
            save_checkpoint(out, last, accelerator, model, optimizer, scheduler, config, plan,
                            extra={"kl_controller": kl_ctl.state_dict(), "reward_moments": moments.state_dict()})
        if main and last % config.plot_every == 0:
            write_plot(out)
        if stopping:
            break
    bar.close()
    logger.close()
    accelerator.wait_for_everyone()  # metrics.jsonl is complete before any rank reads it
    if main:
        write_plot(out)
    records = read_metrics(out)
    summary = {
        "algo": config.algo, "model": config.model, "reward": reward_name, "iterations_done": last,
        "finished": last >= config.iterations,
        "first_reward": records[0]["reward"] if records else None, "last_reward": records[-1]["reward"] if records else None,
        "last_kl": records[-1]["kl"] if records else None, "kl_coef": kl_ctl.value,
    }
    if last >= config.iterations:
        if main:
            save_value_head(out, inner)
        save_final_model(out, accelerator, inner.policy, tokenizer, summary=summary)
    return summary


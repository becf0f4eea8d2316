"""Rollouts for online RL (PPO / RLOO): sample responses from the policy, then score them token by token.

Plumbing, not algorithm: ``trainers/ppo.py`` calls these and hands the tensors to ``trainers/ppo_update.py``
(advantages, the update) and the pure losses in ``trainers/losses.py``. Conventions (shared with the losses):

- prompts are left-padded ``[B, P]`` (so every response starts at column ``P``), responses are
  ``[B, R]`` with ``response_mask`` 1 up to and including the first EOS and 0 after it;
- a response that never emitted EOS within ``max_new_tokens`` is ``finished = False`` (its whole
  length counts, and ``--missing-eos-penalty`` may be subtracted from its score);
- log-probs are computed from ``logits / temperature``: the distribution the tokens were sampled from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engines.prefix_cache import left_pad


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 on real prompt tokens
    response_ids: torch.Tensor  # [B, R] sampled tokens (pad after EOS)
    response_mask: torch.Tensor  # [B, R] 1 up to and including the first EOS
    finished: torch.Tensor  # [B] bool: the response ended with EOS (not cut at max_new_tokens)
    response_texts: list[str]  # decoded response, special tokens dropped

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> "Rollout":
        idx = torch.as_tensor(index, dtype=torch.long)
        return Rollout(
            self.prompt_ids[idx], self.prompt_mask[idx], self.response_ids[idx], self.response_mask[idx],
            self.finished[idx], [self.response_texts[i] for i in idx.tolist()],
        )


def render_prompt_ids(tokenizer, conversations: list[list[dict]], max_prompt_tokens: int) -> list[list[int]]:
    """Each conversation through the tokenizer's chat template (with the assistant cue), as token ids.

    Too-long prompts keep their LAST ``max_prompt_tokens`` tokens (the end holds the question and the
    assistant cue). A tokenizer without a chat template is an error: RL on raw text would train the
    policy on a format it will never be used with.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the policy's tokenizer has no chat template; PPO samples chat responses. "
            "Use an instruct model (or add a chat_template to its tokenizer_config.json)."
        )
    out = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(ids[-max_prompt_tokens:])
    return out


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the generation config's (may be a list)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    if not ids:
        raise ValueError("the policy has no EOS token (neither tokenizer.eos_token_id nor generation_config.eos_token_id)")
    return sorted(ids)


def mask_after_eos(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, finished)``: mask is 1 up to and including the first EOS of each row, 0 after it."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))
    # number of EOS strictly before position t: a token counts while none came before it
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (eos_before == 0).long()
    return mask, is_eos.any(dim=1)


def sampling_config(max_new_tokens: int, temperature: float, eos_ids: list[int], pad_id: int):
    """A GenerationConfig for pure sampling from ``softmax(logits / temperature)``, the distribution
    PPO's log-probs assume: every logits processor a model's own ``generation_config`` may switch on
    (repetition penalty, n-gram blocking, top-k / top-p / min-p / typical / η / ε truncation, minimum
    length, suppressed or forced tokens, …) is set to its neutral value."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, typical_p=1.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, min_length=0, num_beams=1, num_return_sequences=1,
        renormalize_logits=False, remove_invalid_values=False, eos_token_id=eos_ids, pad_token_id=pad_id, use_cache=True,
    )


@torch.no_grad()
def sample_rollout(
    model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float,
    eos_ids: list[int], pad_id: int,
) -> Rollout:
    """Sample one response per prompt from ``softmax(logits / temperature)`` and nothing else: the
    sampling config of :func:`sampling_config`, and — for the duration — in place of the model's own
    ``generation_config`` too, since ``generate`` fills every field left unset (``min_p``,
    ``sequence_bias``, ``suppress_tokens``, …, which have no neutral value but None) from it."""
    ids, mask, _ = left_pad(prompt_ids, pad_id, "cpu")
    device = next(model.parameters()).device
    config = sampling_config(max_new_tokens, temperature, eos_ids, pad_id)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a peft wrapper
    was_training, saved = model.training, base.generation_config
    model.eval()
    base.generation_config = config
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    finally:
        base.generation_config = saved
        model.train(was_training)
    response_ids = out[:, ids.shape[1] :].cpu()
    if response_ids.shape[1] == 0:  # cannot happen with max_new_tokens >= 1, but keep shapes sane
        response_ids = torch.full((len(prompt_ids), 1), pad_id, dtype=torch.long)
    response_mask, finished = mask_after_eos(response_ids, eos_ids)
    texts = tokenizer.batch_decode(response_ids * response_mask + pad_id * (1 - response_mask), skip_special_tokens=True)
    return Rollout(ids, mask, response_ids, response_mask, finished, [t.strip() for t in texts])


def chunks(n: int, size: int) -> list[list[int]]:
    """``[0, n)`` in consecutive index lists of at most ``size``."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def sample_rollouts(model, tokenizer, prompt_ids: list[list[int]], *, chunk_size: int, max_new_tokens: int,
                    temperature: float, eos_ids: list[int], pad_id: int) -> Rollout:
    """:func:`sample_rollout` over ``chunk_size`` prompts at a time, joined into one Rollout."""
    rolls = [sample_rollout(model, tokenizer, [prompt_ids[i] for i in idx], max_new_tokens=max_new_tokens,
                            temperature=temperature, eos_ids=eos_ids, pad_id=pad_id)
             for idx in chunks(len(prompt_ids), chunk_size)]
    return concat_rollouts(rolls, pad_id)


# ---- per-token log-probs and values -----------------------------------------------------------------


class ValueHead(nn.Module):
    """A linear read-out of the backbone's last hidden state: one scalar value per position."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def split_causal_lm(model) -> tuple[nn.Module, nn.Module]:
    """``(backbone, lm_head)`` of a causal LM, through a peft wrapper if there is one (LoRA layers live
    inside the backbone, so calling it directly still applies — or, under ``disable_adapter()``, skips — them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def backbone_hidden(backbone: nn.Module, roll: Rollout, device) -> torch.Tensor:
    """Last hidden state at the positions that PREDICT each response token: ``[B, R, H]``.

    Column ``P − 1 + t`` of prompt+response predicts response token ``t``. Position ids count only real
    tokens (left padding would otherwise shift every position), matching what ``generate`` used.
    """
    input_ids = torch.cat([roll.prompt_ids, roll.response_ids], dim=1).to(device)
    attention = torch.cat([roll.prompt_mask, torch.ones_like(roll.response_mask)], dim=1).to(device)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    hidden = backbone(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=False).last_hidden_state
    P, R = roll.prompt_ids.shape[1], roll.response_ids.shape[1]
    return hidden[:, P - 1 : P - 1 + R]


def response_logprobs(
    lm_head: nn.Module, hidden: torch.Tensor, response_ids: torch.Tensor, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log π(token_t), entropy_t)`` per response token from the hidden states of :func:`backbone_hidden`.

    Logits are computed only at the R response positions (not the prompt): the ``[B, T, V]`` logits of a
    whole sequence are the largest tensor in RL fine-tuning.
    """
    from trainers.losses import entropy_from_logits

    logits = lm_head(hidden).float() / temperature
    targets = response_ids.to(logits.device).unsqueeze(-1)
    logp = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logp, entropy


def concat_rollouts(rolls: list[Rollout], pad_id: int) -> Rollout:
    """Join rollouts generated in chunks (different widths): prompts left-padded, responses right-padded."""
    if len(rolls) == 1:
        return rolls[0]
    P = max(r.prompt_ids.shape[1] for r in rolls)
    R = max(r.response_ids.shape[1] for r in rolls)

    def pad(t: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
        extra = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype)
        return torch.cat([extra, t] if left else [t, extra], dim=1)

    return Rollout(
        torch.cat([pad(r.prompt_ids, P, pad_id, True) for r in rolls]),
        torch.cat([pad(r.prompt_mask, P, 0, True) for r in rolls]),
        torch.cat([pad(r.response_ids, R, pad_id, False) for r in rolls]),
        torch.cat([pad(r.response_mask, R, 0, False) for r in rolls]),
        torch.cat([r.finished for r in rolls]),
        [t for r in rolls for t in r.response_texts],
    )


class PolicyAndValue(nn.Module):
    """Everything PPO trains in one module (one optimizer, one checkpoint): the policy, and for PPO a value
    head — on the policy's own backbone (shared, the default) or on a separate copy of it."""

    def __init__(self, policy: nn.Module, value_head: ValueHead | None = None, value_backbone: nn.Module | None = None):
        super().__init__()
        self.policy, self.value_head, self.value_backbone = policy, value_head, value_backbone

    def forward(self, roll: Rollout, temperature: float, with_values: bool = True, with_entropy: bool = False):
        """``(log π per response token, values or None, entropy or None)``, each ``[B, R]``."""
        device = next(self.parameters()).device
        backbone, lm_head = split_causal_lm(self.policy)
        hidden = backbone_hidden(backbone, roll, device)
        logp, entropy = response_logprobs(lm_head, hidden, roll.response_ids, temperature, with_entropy)
        values = None
        if with_values and self.value_head is not None:
            if self.value_backbone is not None:
                hidden = backbone_hidden(self.value_backbone, roll, device)
            values = self.value_head(hidden)
        return logp, values, entropy


@torch.no_grad()
def score_rollout(model, reference, roll: Rollout, accelerator, temperature: float, chunk_size: int, with_reference: bool = True):
    """``(old log-probs, reference log-probs, values, entropy)`` of a rollout, each ``[B, R]`` on the CPU,
    ``chunk_size`` sequences at a time, in eval mode. ``model`` is the prepared PolicyAndValue (values are
    zeros without a value head); ``reference`` is a frozen causal LM, or None with LoRA, where the
    reference is the policy with its adapters switched off. ``with_reference=False`` (GRPO with β = 0):
    no reference pass; the reference log-probs returned are the policy's own (KL 0)."""
    inner = accelerator.unwrap_model(model)
    model.eval()
    logp, ref_logp, values, entropy = [], [], [], []
    for idx in chunks(len(roll), chunk_size):
        part = roll.select(idx)
        with accelerator.autocast():
            lp, v, ent = model(part, temperature, with_values=True, with_entropy=True)
            if not with_reference:
                ref = lp
            elif reference is None:  # LoRA: the reference is the policy with its adapters off
                with inner.policy.disable_adapter():
                    ref, _, _ = model(part, temperature, with_values=False)
            else:
                backbone, head = split_causal_lm(reference)
                ref, _ = response_logprobs(head, backbone_hidden(backbone, part, accelerator.device), part.response_ids, temperature)
        logp.append(lp.float().cpu())
        ref_logp.append(ref.float().cpu())
        entropy.append(ent.cpu())
        values.append(v.float().cpu() if v is not None else torch.zeros_like(lp).cpu())
    model.train()
    return torch.cat(logp), torch.cat(ref_logp), torch.cat(values), torch.cat(entropy)

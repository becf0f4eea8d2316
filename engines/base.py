"""The engine protocol: the few methods every model back end implements (``engines.base``).

Generators and labelers only talk to this protocol, never to a back end directly, so a run on a
laptop (``transformers``), on a GPU (``vllm``) or against a server (``openai``) is the same code.
The protocol is ``generate``, ``score_options``, ``render_chat`` and the ``can_score`` flag; the
back ends themselves live next to this module (engines/transformers_engine.py, vllm_engine.py,
openai_engine.py) and are loaded by name through ``engines.load_engine``.

Also here: the request and result types (GenerationParams, Completion), what an engine does with a
prompt too long for its context (``on_long``: ``fit_prompt``, PromptTooLongError), and
``normalize_logprobs`` for turning option log-probs into probabilities.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence, Union, runtime_checkable

log = logging.getLogger(__name__)

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
Request = Union[str, list[Message]]  # a raw prompt, or a chat rendered with the model's chat template


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # stop strings; the text returned excludes them
    seed: int | None = 0  # sampling is reproducible for a given seed, batch composition and engine

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "skipped" (prompt too long, on_long="skip")
    prompt_truncated: bool = False  # the prompt's first tokens were cut so it fits (on_long="truncate")


ON_LONG = ("truncate", "skip", "error")  # what an engine does with a prompt that does not fit its context


class PromptTooLongError(ValueError):
    """A prompt plus max_new_tokens does not fit the model's context (engine option on_long="error").
    ``index`` is the request's position in the generate call."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def check_on_long(on_long: str) -> str:
    if on_long not in ON_LONG:
        raise ValueError(f"on_long must be one of {', '.join(ON_LONG)}, got {on_long!r}")
    return on_long


def fit_prompt(ids: list[int], max_new_tokens: int, max_length: int | None, on_long: str, index: int) -> list[int] | None:
    """A prompt's token ids, if they plus max_new_tokens fit max_length; else by ``on_long``: the last
    tokens that fit ("truncate"), None ("skip": generate nothing) or PromptTooLongError ("error")."""
    if max_length is None or len(ids) + max_new_tokens <= max_length:
        return ids
    keep = max_length - max_new_tokens
    if keep < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt (max_length {max_length})")
    if on_long == "error":
        raise PromptTooLongError(
            f"request {index} has {len(ids)} prompt tokens; with max_new_tokens={max_new_tokens} that exceeds "
            f"max_length {max_length} (on_long='error'; 'truncate' keeps the last {keep}, 'skip' leaves it out)", index)
    log.warning("request %d has %d prompt tokens, too many for %d new tokens within max_length %d: %s", index,
                len(ids), max_new_tokens, max_length, f"keeping the last {keep}" if on_long == "truncate" else "skipped")
    return ids[-keep:] if on_long == "truncate" else None


class EngineCapabilityError(RuntimeError):
    """The engine cannot do what was asked (e.g. scoring on a server without log-probs)."""


@runtime_checkable
class Engine(Protocol):
    name: str  # back-end name, e.g. "transformers"
    model_id: str  # what the user asked for, recorded on every record
    can_score: bool  # False → score_options() raises EngineCapabilityError

    def generate(self, requests: Sequence[Request], params: GenerationParams) -> list[Completion]:
        """Batched generation, one completion per request, in request order."""
        ...

    def score_options(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """For each context (raw text), the summed log-probability of every option's tokens after it
        (the same options for all): the labelers' one scoring primitive, which lets a back end encode a
        context once for all its options and a batch's common prefix once for all its contexts."""
        ...

    def render_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The model's chat template applied to messages, as raw text (for scoring chats)."""
        ...


def normalize_logprobs(logprobs: Sequence[float]) -> list[float]:
    """Softmax over summed option log-probs: p_i = exp(lp_i) / Σ_j exp(lp_j), computed stably."""
    m = max(logprobs)
    if m == -math.inf:
        return [1.0 / len(logprobs)] * len(logprobs)
    exps = [math.exp(lp - m) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]

"""Reward functions for online RL, chosen by a ``--reward`` spec:

- ``pm:PATH`` — a preference model trained by ``cai train pm`` (any ``AutoModelForSequenceClassification``
  with one label): the score is its logit at the last non-pad token of prompt + response, rendered with
  the PM's OWN tokenizer and chat template (the policy's tokenization may differ).
- ``ai:MODEL`` — direct RLAIF (d-RLAIF): a labeler model rates each response 1–10 and the expected score,
  rescaled to [-1, 1], is the reward (``labelers.score.score_responses`` on a transformers engine).
- ``py:module:function`` — your own Python function, called as ``fn(prompts, responses) -> list[float]``
  with ``prompts`` the text of each conversation's last user turn and ``responses`` the decoded responses.

Every reward function is called as ``reward(conversations, responses) -> list[float]``, where
``conversations`` are the prompt messages (lists of ``{"role", "content"}``).
"""

from __future__ import annotations

import importlib
import math
from typing import Callable, Protocol

import torch


class RewardFunction(Protocol):
    name: str

    def __call__(self, conversations: list[list[dict]], responses: list[str]) -> list[float]: ...


class RewardSpecError(ValueError):
    """A ``--reward`` value that cannot be understood or loaded."""


def _check_scores(scores, n: int, source: str) -> list[float]:
    scores = [float(s) for s in scores]
    if len(scores) != n:
        raise RuntimeError(f"reward {source} returned {len(scores)} scores for {n} responses")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise RuntimeError(f"reward {source} returned a non-finite score for response(s) {bad[:5]}")
    return scores


class PreferenceModelReward:
    """Score = the preference model's logit at the last non-pad token of (prompt + response) as a chat."""

    def __init__(self, path: str, *, device: str | torch.device = "cpu", batch_size: int = 16, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from trainers.config import ConfigError
        from trainers.models import model_source

        self.name = f"pm:{path}"
        try:  # safetensors only, like every model the trainers load
            folder = model_source(path, f"--reward pm:{path}")
            self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True, trust_remote_code=trust_remote_code)
        except ConfigError as e:
            raise RewardSpecError(str(e)) from None
        except OSError as e:
            raise RewardSpecError(f"--reward pm:{path}: cannot load the preference model ({str(e).strip().splitlines()[0]})") from None
        if self.model.config.num_labels != 1:
            raise RewardSpecError(f"{path}: expected a preference model with one output (num_labels=1), found {self.model.config.num_labels}")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # the model finds the last real token through the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.batch_size = device, batch_size

    def render(self, messages: list[dict], response: str) -> str:
        chat = messages + [{"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(chat, tokenize=False)
        return "".join(f"\n\n{'Human' if m['role'] == 'user' else m['role'].title()}: {m['content']}" for m in chat)

    @torch.no_grad()
    def __call__(self, conversations: list[list[dict]], responses: list[str]) -> list[float]:
        texts = [self.render(m, r) for m, r in zip(conversations, responses)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start : start + self.batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
            scores.extend(logits[:, 0].float().cpu().tolist())
        return _check_scores(scores, len(texts), self.name)


class AIScoreReward:
    """Direct RLAIF: ``labelers.score.score_responses`` (expected 1–10 rating rescaled to [-1, 1])."""

    def __init__(self, model: str, *, engine_options: dict | None = None, score_options: dict | None = None):
        try:
            from labelers.score import score_responses
        except ImportError as e:
            raise RewardSpecError(f"--reward ai:{model} needs labelers.score.score_responses, which is not available ({e})") from None
        from engines import load_engine

        self.name = f"ai:{model}"
        try:
            self.engine = load_engine("transformers", model, **(engine_options or {}))
        except OSError as e:  # a missing folder, an uncached Hub id
            raise RewardSpecError(f"--reward ai:{model}: cannot load the labeler model ({str(e).strip().splitlines()[0]})") from None
        self._score = score_responses
        self.score_options = score_options or {}

    def __call__(self, conversations: list[list[dict]], responses: list[str]) -> list[float]:
        scores = self._score(self.engine, conversations, responses, **self.score_options)
        return _check_scores(scores, len(responses), self.name)


class PythonReward:
    """``py:package.module:function`` → ``function(prompts: list[str], responses: list[str]) -> list[float]``."""

    def __init__(self, target: str):
        module_name, _, func_name = target.rpartition(":")
        if not module_name or not func_name:
            raise RewardSpecError(f"--reward py:{target}: expected py:module:function (e.g. py:my_rewards:length_bonus)")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise RewardSpecError(f"--reward py:{target}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from None
        fn = getattr(module, func_name, None)
        if not callable(fn):
            raise RewardSpecError(f"--reward py:{target}: module {module_name!r} has no function {func_name!r}")
        self.name, self.fn = f"py:{target}", fn

    def __call__(self, conversations: list[list[dict]], responses: list[str]) -> list[float]:
        prompts = [m[-1]["content"] for m in conversations]
        return _check_scores(self.fn(prompts, list(responses)), len(responses), self.name)


def load_reward(spec: str, *, device="cpu", batch_size: int = 16, trust_remote_code: bool = False) -> Callable:
    """Build the reward function named by ``spec`` (``pm:PATH`` | ``ai:MODEL`` | ``py:module:function``)."""
    kind, sep, target = spec.partition(":")
    if not sep or not target:
        raise RewardSpecError(f"--reward {spec!r}: expected pm:PATH, ai:LABELER_MODEL or py:module:function")
    if kind == "pm":
        return PreferenceModelReward(target, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)
    if kind == "ai":
        return AIScoreReward(target, engine_options={"device": str(device)} if str(device) != "cpu" else None)
    if kind == "py":
        return PythonReward(target)
    raise RewardSpecError(f"--reward {spec!r}: unknown kind {kind!r}; expected pm:, ai: or py:")


def reward_from_config(config, device) -> Callable:
    """The reward function of a PPOConfig: ``load_reward(config.reward)``, with an ``ai:`` labeler also
    given ``--ai-principle`` / ``--constitution`` and ``--reward-batch-size``."""
    if config.reward.startswith("ai:"):
        options = {"batch_size": config.reward_batch_size}
        if config.ai_principle:
            options["principle"] = config.ai_principle
        if config.constitution:
            from constitution.loader import resolve_constitution

            options["constitution"] = resolve_constitution(config.constitution)
        engine_options = {"device": str(device)} if str(device) != "cpu" else {}
        return AIScoreReward(config.reward[3:], engine_options=engine_options, score_options=options)
    return load_reward(config.reward, device=device, batch_size=config.reward_batch_size, trust_remote_code=config.trust_remote_code)


class RunningMoments:
    """Running mean and variance of every score seen so far (Chan et al.'s parallel update), used to
    normalise rewards: ``(score − mean) / std``. Its state is checkpointed with the run."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-8))

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])

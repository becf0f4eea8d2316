"""Reward functions for online RL, chosen by a ``--reward`` spec:

- ``pm:PATH`` — a preference model trained by ``cai train pm`` (any ``AutoModelForSequenceClassification``
  with one label): the score is its logit at the last non-pad token of prompt + response, rendered with
  the PM's OWN tokenizer and chat template (the policy's tokenization may differ).
- ``ai:MODEL`` — direct RLAIF (d-RLAIF): a labeler model rates each response 1–10 and the expected score,
  rescaled to [-1, 1], is the reward (``labelers.score.score_responses`` on a transformers engine).
- ``ai:MODEL@http://HOST:PORT/v1`` — the same judge served by an OpenAI-compatible server (``vllm serve``,
  SGLang, …) through the ``openai`` engine, at most ``--reward-concurrency`` requests in flight, so a large
  judge runs on other GPUs than the policy. Its chat template comes from ``--reward-tokenizer`` (default MODEL).
- ``py:module:function`` — your own Python function, called as ``fn(prompts, responses) -> list[float]``
  with ``prompts`` the text of each conversation's last user turn and ``responses`` the decoded responses.

Several ``--reward`` are summed, each times its ``--reward-weight`` (:class:`WeightedRewards`). Every reward
function is called as ``reward(conversations, responses) -> list[float]``, where
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

    def __init__(self, model: str, *, engine_options: dict | None = None, score_options: dict | None = None,
                 engine: str = "transformers"):
        try:
            from labelers.score import score_responses
        except ImportError as e:
            raise RewardSpecError(f"--reward ai:{model} needs labelers.score.score_responses, which is not available ({e})") from None
        from engines import load_engine

        where = f"@{engine_options['base_url']}" if engine == "openai" else ""
        self.name = f"ai:{model}{where}"
        try:
            self.engine = load_engine(engine, model, **(engine_options or {}))
        except (OSError, ValueError) as e:  # a missing folder, an uncached Hub id, a bad engine option
            raise RewardSpecError(f"--reward {self.name}: cannot load the labeler ({str(e).strip().splitlines()[0]})") from None
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


def split_served(target: str) -> tuple[str, str | None]:
    """``MODEL@http(s)://…`` → ``(MODEL, URL)``; a plain MODEL → ``(MODEL, None)``."""
    for scheme in ("@http://", "@https://"):
        if scheme in target:
            model, _, rest = target.rpartition(scheme)
            if not model:
                raise RewardSpecError(f"--reward ai:{target}: expected ai:MODEL@URL with the model name the server knows")
            return model, scheme[1:] + rest
    return target, None


def _one_reward_from_config(spec: str, config, device) -> Callable:
    if not spec.startswith("ai:"):
        return load_reward(spec, device=device, batch_size=config.reward_batch_size, trust_remote_code=config.trust_remote_code)
    options = {"batch_size": config.reward_batch_size}
    if config.ai_principle:
        options["principle"] = config.ai_principle
    if config.constitution:
        from constitution.loader import resolve_constitution

        options["constitution"] = resolve_constitution(config.constitution)
    model, url = split_served(spec[3:])
    if url is not None:  # a judge behind an OpenAI-compatible server; scoring via /completions echo + logprobs
        served = {"base_url": url, "concurrency": config.reward_concurrency, "tokenizer": config.reward_tokenizer or model,
                  "use_chat": False}
        return AIScoreReward(model, engine_options=served, score_options=options, engine="openai")
    engine_options = {"device": str(device)} if str(device) != "cpu" else {}
    return AIScoreReward(model, engine_options=engine_options, score_options=options)


class WeightedRewards:
    """``Σ_j w_j · reward_j(conversations, responses)``: several rewards (a PM, a judge, a rule) in one."""

    def __init__(self, rewards: list[Callable], weights: list[float]):
        self.rewards, self.weights = rewards, weights
        self.name = " + ".join(f"{w:g}·{getattr(r, 'name', 'custom')}" for r, w in zip(rewards, weights))

    def __call__(self, conversations: list[list[dict]], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        for reward, weight in zip(self.rewards, self.weights):
            scores = _check_scores(reward(conversations, responses), len(responses), getattr(reward, "name", "custom"))
            total = [t + weight * x for t, x in zip(total, scores)]
        return total


def reward_from_config(config, device) -> Callable:
    """The reward function of a PPOConfig: each ``--reward`` loaded (an ``ai:`` labeler also given
    ``--ai-principle`` / ``--constitution`` and ``--reward-batch-size``; a served one ``--reward-concurrency``),
    one alone as it is, several as their ``--reward-weight``-ed sum."""
    rewards = [_one_reward_from_config(spec, config, device) for spec in config.reward]
    weights = list(config.reward_weight) or [1.0] * len(rewards)
    if len(rewards) == 1 and weights[0] == 1.0:
        return rewards[0]
    return WeightedRewards(rewards, weights)


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
        self.update_stats(n, values.mean().item(), values.var(unbiased=False).item())

    def update_stats(self, n: int, batch_mean: float, batch_var: float) -> None:
        """Fold in a batch known by its size, mean and population variance (e.g. reduced over processes)."""
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

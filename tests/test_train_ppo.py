"""PPO / RLOO end to end on tiny models (CPU): learning happens, β holds the policy near the reference,
a preference model can be the reward, and a crashed run resumes exactly.

The policy is a tiny random Llama whose output layer is biased towards 8 single-token words (and EOS), so
that from the start it writes short "sentences" of those words and the target word " cat" appears in
~10 % of positions: a random tiny model spreads its mass over all 49 152 tokens and would almost never
emit any given word, leaving RL nothing to reinforce.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from trainers.config import load_config
from trainers.metrics import read_metrics
from trainers.ppo import PPOConfig, train_ppo

WORDS = [" cat", " dog", " sun", " tree", " blue", " red", " house", " road"]
TARGET = "cat"
PROMPTS = ["Say something.", "Tell me a story.", "Name some things.", "What do you see?", "List words.", "Go on.",
           "Write a line.", "Describe the room.", "Hello!", "Continue.", "Your turn.", "Speak.", "Talk to me.",
           "What now?", "Any ideas?", "Tell me more."]

REWARD_MODULE = '''
def target_fraction(prompts, responses):
    """Share of the response's words that are the target word."""
    return [sum(w == "cat" for w in r.split()) / max(len(r.split()), 1) for r in responses]
'''


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and stay fast when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_biased_policy(path: Path, seed: int = 0, word_logit: float = 10.0, eos_logit: float = 9.0,
                        hidden_size: int = 32, heads: int = 4) -> list[int]:
    """A tiny Llama that writes mostly WORDS: every input embedding gets a constant +1 in dimension 0, which
    survives to the final norm as ≈ +√hidden_size (5.7), and the output rows of WORDS (and EOS) read that
    dimension, so their logits sit near ``word_logit`` (EOS ``eos_logit``) while all others stay near 0.
    (vLLM's CPU attention needs a head size of at least 32: hidden_size=64, heads=2 for the vLLM tests.)"""
    from conftest import TOKENIZER_DIR
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in WORDS]
    assert all(len(i) == 1 for i in ids), "every word must be a single token"
    ids = [i[0] for i in ids]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[ids, 0] = word_logit / math.sqrt(hidden_size)
        model.lm_head.weight[tokenizer.eos_token_id, 0] = eos_logit / math.sqrt(hidden_size)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return ids


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("biased-policy")
    build_biased_policy(path)
    return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reward_module_dir(tmp_path_factory) -> Path:
    """A folder holding the module ``ppo_test_rewards``, on sys.path while this file's tests run."""
    folder = tmp_path_factory.mktemp("reward-module")
    (folder / "ppo_test_rewards.py").write_text(REWARD_MODULE, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("ppo_test_rewards", None)


@pytest.fixture(scope="module")
def py_reward(reward_module_dir) -> str:
    return "py:ppo_test_rewards:target_fraction"


def make_config(out: Path, prompts: Path, model: Path, reward: str, **overrides) -> PPOConfig:
    options = dict(
        prompts=[str(prompts)], model=str(model), reward=reward, out=str(out), iterations=10, batch_size=16,
        max_new_tokens=8, lr=5e-3, kl_coef=0.05, ppo_epochs=4, minibatch_size=8, rloo_k=4, resume="never",
        quiet=True, save_every=100, sample_every=5, plot_every=100,
    )
    options.update(overrides)
    return load_config(PPOConfig, None, **options)


def rewards_of(out: Path) -> list[float]:
    return [r["reward"] for r in read_metrics(out)]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory, prompts_file, policy_dir, py_reward):
    """One 10-iteration PPO run with a small β, shared by the tests below: ``(config, summary)``."""
    torch.set_num_threads(1)
    config = make_config(tmp_path_factory.mktemp("ppo") / "out", prompts_file, policy_dir, py_reward)
    return config, train_ppo(config)


def test_ppo_raises_a_programmatic_reward(ppo_run):
    config, summary = ppo_run
    metrics = read_metrics(config.out)
    rewards = [m["reward"] for m in metrics]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    print("ppo rewards", [round(r, 3) for r in rewards], "kl", [round(m["kl"], 2) for m in metrics])
    assert last > first + 0.15, f"mean reward did not rise clearly: {rewards}"
    assert all(math.isfinite(m["kl"]) and math.isfinite(m["value_loss"]) for m in metrics)
    for key in ("entropy", "clip_fraction", "value_loss", "response_length", "rollout_s", "reward_s", "logprobs_s", "update_s", "kl_coef"):
        assert key in metrics[-1], key
    assert summary["finished"] and summary["iterations_done"] == 10
    # the final policy loads with from_pretrained, and it samples the target more than the initial one
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(config.out)
    AutoTokenizer.from_pretrained(config.out)
    assert (Path(config.out) / "ppo_curves.png").stat().st_size > 1000
    assert (Path(config.out) / "value_head.safetensors").exists()
    samples = [json.loads(ln) for ln in (Path(config.out) / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 5, 10} and all("response" in s for s in samples)


def test_rloo_raises_a_programmatic_reward(tmp_path, prompts_file, policy_dir, py_reward):
    config = make_config(tmp_path / "rloo", prompts_file, policy_dir, py_reward, algo="rloo", batch_size=4, rloo_k=4)
    train_ppo(config)
    metrics = read_metrics(config.out)
    rewards = [m["reward"] for m in metrics]
    print("rloo rewards", [round(r, 3) for r in rewards], "kl", [round(m["kl"], 2) for m in metrics])
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.15, f"mean reward did not rise clearly: {rewards}"
    assert all(math.isfinite(m["kl"]) for m in metrics)
    assert "value_loss" not in metrics[-1]  # RLOO has no value head
    assert not (Path(config.out) / "value_head.safetensors").exists()


def test_large_beta_keeps_the_policy_near_the_reference(tmp_path, ppo_run, prompts_file, policy_dir, py_reward):
    small_config, _ = ppo_run
    config = make_config(tmp_path / "ppo-beta", prompts_file, policy_dir, py_reward, kl_coef=3.0)
    train_ppo(config)
    small, large = read_metrics(small_config.out), read_metrics(config.out)
    kl_small = sum(m["kl"] for m in small[-3:]) / 3
    kl_large = sum(m["kl"] for m in large[-3:]) / 3
    print("kl small β", kl_small, "kl large β", kl_large)
    assert kl_large < 0.25 * kl_small, (kl_small, kl_large)
    assert kl_large < 1.0


class CrashOnCall:
    """The py reward, but raising on its n-th call: a run killed mid-iteration."""

    def __init__(self, n: int):
        import ppo_test_rewards

        self.n, self.calls, self.fn = n, 0, ppo_test_rewards.target_fraction

    def __call__(self, conversations, responses):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("simulated kill")
        return self.fn([m[-1]["content"] for m in conversations], responses)


def test_resume_after_a_crash_continues_exactly(tmp_path, ppo_run, prompts_file, policy_dir, py_reward):
    """Crash in iteration 7 (checkpoints every 3: step 6 exists), rerun: the run continues from step 6 and
    ends with the same weights and the same curve as the uninterrupted run."""
    from safetensors.torch import load_file

    reference_config, _ = ppo_run
    config = make_config(tmp_path / "ppo-resume", prompts_file, policy_dir, py_reward, save_every=3, resume="auto")
    with pytest.raises(KeyboardInterrupt):
        train_ppo(config, reward_fn=CrashOnCall(7))
    assert [m["step"] for m in read_metrics(config.out)] == [1, 2, 3, 4, 5, 6]
    assert (Path(config.out) / "checkpoints" / "step-6").is_dir()
    summary = train_ppo(config)  # the rerun finds checkpoints/step-6
    assert summary["finished"]
    numbers = ("reward", "kl", "entropy", "value_loss", "clip_fraction", "kl_coef", "response_length")
    resumed, straight = read_metrics(config.out), read_metrics(reference_config.out)
    assert [m["step"] for m in resumed] == list(range(1, 11))
    for a, b in zip(resumed, straight):
        for key in numbers:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    ours, theirs = load_file(str(Path(config.out) / "model.safetensors")), load_file(str(Path(reference_config.out) / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6), name


# ---- a preference model as the reward ---------------------------------------------------------------


def train_tiny_preference_model(path: Path, steps: int = 80) -> Path:
    """A tiny LlamaForSequenceClassification trained (soft-label Bradley–Terry) on synthetic pairs whose
    chosen response holds more " cat" words than the rejected one; saved like `cai train pm` saves."""
    import random

    from conftest import TOKENIZER_DIR
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from trainers.losses import soft_bt_loss

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tokenizer.padding_side = "right"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, num_labels=1)
    torch.manual_seed(0)
    pm = LlamaForSequenceClassification(config)
    rng = random.Random(0)
    others = [w.strip() for w in WORDS if w.strip() != TARGET]

    def chat(n_target: int, n: int) -> str:
        words = [TARGET] * n_target + [rng.choice(others) for _ in range(n - n_target)]
        rng.shuffle(words)
        messages = [{"role": "user", "content": rng.choice(PROMPTS)}, {"role": "assistant", "content": " ".join(words)}]
        return tokenizer.apply_chat_template(messages, tokenize=False)

    optimizer = torch.optim.AdamW(pm.parameters(), lr=3e-3)
    for _ in range(steps):
        chosen, rejected = [], []
        for _ in range(16):
            n = rng.randint(1, 8)
            a, b = rng.sample(range(n + 1), 2)
            chosen.append(chat(max(a, b), n)), rejected.append(chat(min(a, b), n))
        enc = tokenizer(chosen + rejected, return_tensors="pt", padding=True, add_special_tokens=False)
        scores = pm(**enc).logits[:, 0]
        loss = soft_bt_loss(scores[:16], scores[16:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3, f"the tiny preference model did not learn its synthetic pairs (loss {loss.item():.3f})"
    pm.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def test_ppo_raises_the_preference_model_score(tmp_path, prompts_file, policy_dir):
    from trainers.rewards import PreferenceModelReward

    pm_dir = train_tiny_preference_model(tmp_path / "pm")
    # the reward reads the PM's logit at the last non-pad token of the chat, with the PM's tokenizer
    reward = PreferenceModelReward(str(pm_dir), batch_size=2)
    conversations = [[{"role": "user", "content": "Go on."}]] * 3
    batched = reward(conversations, ["cat cat", "dog", "cat dog sun tree blue red"])
    one_by_one = [reward(conversations[:1], [r])[0] for r in ["cat cat", "dog", "cat dog sun tree blue red"]]
    assert batched == pytest.approx(one_by_one, abs=1e-4)
    assert batched[0] > batched[1]

    config = make_config(tmp_path / "ppo-pm", prompts_file, policy_dir, f"pm:{pm_dir}", iterations=8)
    train_ppo(config)
    rewards = rewards_of(Path(config.out))
    print("pm scores", [round(r, 2) for r in rewards])
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 1.0, f"the PM score did not rise: {rewards}"


# ---- options: missing-EOS penalty, LoRA reference, separate value model, ai: reward --------------------



def test_missing_eos_penalty_teaches_the_policy_to_finish(tmp_path, prompts_file, policy_dir):
    config = make_config(tmp_path / "ppo-eos", prompts_file, policy_dir, "py:unused:unused", iterations=6,
                         missing_eos_penalty=1.0, max_new_tokens=6)
    train_ppo(config, reward_fn=lambda conversations, responses: [0.0] * len(responses))
    finished = [m["eos_fraction"] for m in read_metrics(config.out)]
    print("eos fraction", finished)
    assert sum(finished[-2:]) / 2 > sum(finished[:2]) / 2 + 0.2, finished


def test_lora_uses_the_adapter_free_policy_as_reference(tmp_path, prompts_file, policy_dir, py_reward):
    config = make_config(tmp_path / "ppo-lora", prompts_file, policy_dir, py_reward, iterations=3, lora_r=4,
                         lora_alpha=8, lr=2e-2, batch_size=8)
    train_ppo(config)
    metrics = read_metrics(config.out)
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA B starts at 0: policy == reference
    assert metrics[-1]["kl"] != pytest.approx(0.0, abs=1e-4)  # the adapters moved the policy away from it
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(config.out)  # adapters merged into plain weights
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_separate_value_model_checkpointing_and_adaptive_kl(tmp_path, prompts_file, policy_dir, py_reward):
    from safetensors.torch import load_file

    config = make_config(tmp_path / "ppo-value", prompts_file, policy_dir, py_reward, iterations=2,
                         separate_value_model=True, batch_size=8, save_every=2, gradient_checkpointing=True,
                         target_kl=0.5, kl_horizon=100)
    train_ppo(config)
    saved = load_file(str(Path(config.out) / "checkpoints" / "step-2" / "model.safetensors"))
    assert any(k.startswith("value_backbone.") for k in saved) and any(k.startswith("value_head.") for k in saved)
    metrics = read_metrics(config.out)
    assert all(math.isfinite(m["value_loss"]) for m in metrics)
    # iteration 1 has KL 0 < target: the adaptive controller lowers β by the capped 20 % × 8/100
    assert metrics[1]["kl_coef"] == pytest.approx(0.05 * (1 - 0.2 * 8 / 100))


def test_ai_reward_scores_in_range(tmp_path, prompts_file, policy_dir, tiny_model_dir):
    """d-RLAIF: a (tiny, random) labeler's expected 1–10 rating rescaled to [-1, 1] is the reward."""
    pytest.importorskip("labelers.score")
    config = make_config(tmp_path / "ppo-ai", prompts_file, policy_dir, f"ai:{tiny_model_dir}", iterations=1,
                         batch_size=4, ppo_epochs=1)
    train_ppo(config)
    samples = [json.loads(ln) for ln in (Path(config.out) / "samples.jsonl").read_text().splitlines()]
    assert samples and all(-1.0 <= s["score"] <= 1.0 for s in samples)


# ---- pieces: EOS masking, padding, reward specs, running moments, config checks ----------------------


def test_mask_after_eos_keeps_the_first_eos_and_flags_unfinished():
    from engines.prefix_cache import left_pad
    from trainers.rollout import mask_after_eos

    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    mask, finished = mask_after_eos(ids, [2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]
    padded, pad_mask, _ = left_pad([[1, 2, 3], [4]], pad_token_id=0, device="cpu")
    assert padded.tolist() == [[1, 2, 3], [0, 0, 4]] and pad_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_rollout_logprobs_match_a_plain_forward(policy_dir):
    """The log-probs PPO trains on (left padding, position ids, logits only at response positions) equal
    those of an unpadded forward pass of each prompt + response alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.rollout import backbone_hidden, eos_token_ids, render_prompt_ids, response_logprobs, sample_rollout, split_causal_lm

    model, tokenizer = AutoModelForCausalLM.from_pretrained(policy_dir), AutoTokenizer.from_pretrained(policy_dir)
    prompt_ids = render_prompt_ids(tokenizer, [[{"role": "user", "content": p}] for p in ("Hi", "A much longer question here?")], 64)
    torch.manual_seed(0)
    roll = sample_rollout(model, tokenizer, prompt_ids, max_new_tokens=6, temperature=0.7, eos_ids=eos_token_ids(model, tokenizer), pad_id=tokenizer.pad_token_id)
    backbone, head = split_causal_lm(model)
    with torch.no_grad():
        logp, _ = response_logprobs(head, backbone_hidden(backbone, roll, "cpu"), roll.response_ids, 0.7)
        for i, ids in enumerate(prompt_ids):
            n = int(roll.response_mask[i].sum())
            full = torch.tensor([ids + roll.response_ids[i, :n].tolist()])
            logits = model(full).logits[0, len(ids) - 1 : len(ids) - 1 + n] / 0.7
            expected = torch.log_softmax(logits, -1).gather(-1, full[0, len(ids):, None]).squeeze(-1)
            assert torch.allclose(logp[i, :n], expected, atol=1e-4)
    assert all(isinstance(t, str) for t in roll.response_texts)


def test_reward_specs_fail_clearly(tmp_path, prompts_file, policy_dir):
    from trainers.config import ConfigError
    from trainers.rewards import RewardSpecError, load_reward

    with pytest.raises(RewardSpecError, match="cannot import module"):
        load_reward("py:no_such_module_xyz:f")
    with pytest.raises(RewardSpecError, match="expected py:module:function"):
        load_reward("py:justaname")
    with pytest.raises(ConfigError, match="expected pm:PATH"):
        make_config(tmp_path, prompts_file, policy_dir, "rm:whatever")
    with pytest.raises(ConfigError, match="rloo-k"):
        make_config(tmp_path, prompts_file, policy_dir, "py:a:b", algo="rloo", rloo_k=1)
    with pytest.raises(ConfigError, match="temperature"):
        make_config(tmp_path, prompts_file, policy_dir, "py:a:b", temperature=0.0)


def test_running_moments_match_the_whole_sample():
    from trainers.rewards import RunningMoments

    values = torch.randn(50, generator=torch.Generator().manual_seed(0)) * 3 + 1
    moments = RunningMoments()
    for chunk in values.split(7):
        moments.update(chunk)
    assert moments.mean == pytest.approx(values.mean().item(), rel=1e-6)
    assert moments.std == pytest.approx(values.std(unbiased=False).item(), rel=1e-6)
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored.normalize(torch.tensor([1.0])).item() == moments.normalize(torch.tensor([1.0])).item()


@pytest.mark.slow
def test_cai_train_ppo_cli_runs_and_resumes(tmp_path, prompts_file, policy_dir, py_reward, reward_module_dir):
    """The real `cai train ppo` command: stop after 1 iteration, rerun to finish."""
    import os
    import subprocess

    from conftest import REPO_ROOT

    cai = Path(sys.executable).parent / "cai"
    env = {**os.environ, "PYTHONPATH": str(reward_module_dir), "OMP_NUM_THREADS": "1"}
    args = [str(cai), "train", "ppo", "--prompts", str(prompts_file), "--model", str(policy_dir), "--reward", py_reward,
            "--out", str(tmp_path / "cli"), "--iterations", "2", "--batch-size", "4", "--max-new-tokens", "4", "--quiet"]
    first = subprocess.run(args + ["--stop-after-steps", "1"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["iterations_done"] == 1
    second = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout)["finished"] is True
    assert [m["step"] for m in read_metrics(tmp_path / "cli")] == [1, 2]


# ---- the sampling distribution, dropout and the logged learning rate ---------------------------------


def test_rollout_ignores_the_models_generation_config(tmp_path):
    """A policy that puts almost all its mass on " cat", shipped with a generation_config that would forbid
    repeating (or even emitting) it: rollouts still sample from softmax(logits / T), so they say cat cat …"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.rollout import eos_token_ids, render_prompt_ids, sample_rollout

    ids = build_biased_policy(tmp_path, word_logit=0.0, eos_logit=0.0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    cat = ids[WORDS.index(" cat")]
    with torch.no_grad():
        model.lm_head.weight[cat, 0] = 25.0 / math.sqrt(32)
    model.generation_config.update(repetition_penalty=5.0, no_repeat_ngram_size=1, top_k=1, min_p=0.5, typical_p=0.5,
                                   suppress_tokens=[cat], min_new_tokens=3)
    saved = model.generation_config.to_dict()
    prompt_ids = render_prompt_ids(tokenizer, [[{"role": "user", "content": "Hi"}]] * 2, 64)
    torch.manual_seed(0)
    roll = sample_rollout(model, tokenizer, prompt_ids, max_new_tokens=5, temperature=1.0,
                          eos_ids=eos_token_ids(model, tokenizer), pad_id=tokenizer.pad_token_id)
    assert roll.response_ids.tolist() == [[cat] * 5] * 2
    assert model.generation_config.to_dict() == saved  # the model's own config is put back


def dropout_policy(path: Path) -> Path:
    """The biased policy with attention dropout 0.5 (applied in train mode only)."""
    build_biased_policy(path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    return path


def test_disable_dropout_zeroes_modules_lora_and_attention_rates(tmp_path):
    from trainers.models import disable_dropout, load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(dropout_policy(tmp_path)), lora_r=4, lora_dropout=0.5)
    rates = lambda: [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] + [  # noqa: E731
        m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")]
    assert max(rates()) == 0.5
    disable_dropout(model)
    assert rates() and max(rates()) == 0.0


def test_ppo_first_update_has_ratio_one_despite_dropout(tmp_path, prompts_file, py_reward, monkeypatch):
    """With dropout on, the update's log-probs (train mode) would differ from the rollout's (eval mode) before
    any step; PPO disables dropout, so the first minibatch's ratio is exactly 1."""
    import trainers.losses as losses

    calls = []
    original = losses.ppo_policy_loss
    monkeypatch.setattr(losses, "ppo_policy_loss", lambda logp, old, *a: calls.append((logp.detach(), old)) or original(logp, old, *a))
    config = make_config(tmp_path / "out", prompts_file, dropout_policy(tmp_path / "model"), py_reward, iterations=1,
                         batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=4)
    train_ppo(config)
    logp, old = calls[0]
    assert torch.allclose(logp, old, atol=1e-5)


def test_ppo_logs_the_lr_each_update_used(tmp_path, prompts_file, policy_dir, py_reward):
    """One update per iteration, linear warm-up over the first of 2: iteration 1 updated with lr 0."""
    config = make_config(tmp_path / "out", prompts_file, policy_dir, py_reward, iterations=2, batch_size=4,
                         minibatch_size=4, ppo_epochs=1, max_new_tokens=4, lr_schedule="linear", warmup_ratio=0.5, lr=1e-3)
    train_ppo(config)
    assert [m["lr"] for m in read_metrics(config.out)] == [0.0, pytest.approx(1e-3)]


def test_a_checkpoint_with_a_one_string_reward_still_resumes(tmp_path, prompts_file, policy_dir, py_reward):
    """Checkpoints written before --reward became repeatable hold it as one string: they still resume."""
    config = make_config(tmp_path / "old", prompts_file, policy_dir, py_reward, iterations=2, batch_size=4, ppo_epochs=1,
                         max_new_tokens=4, stop_after_steps=1, save_every=1, resume="auto")
    train_ppo(config)
    state_file = Path(config.out) / "checkpoints" / "step-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["config"]["reward"] == [py_reward]
    state["config"]["reward"] = py_reward
    state.get("paths", {})["reward"] = py_reward
    state_file.write_text(json.dumps(state))
    summary = train_ppo(make_config(tmp_path / "old", prompts_file, policy_dir, py_reward, iterations=2, batch_size=4,
                                    ppo_epochs=1, max_new_tokens=4, save_every=1, resume="auto"))
    assert summary["finished"] and [m["step"] for m in read_metrics(config.out)] == [1, 2]

"""What a PPO / RLOO / GRPO run writes besides metrics and checkpoints: samples.jsonl, ppo_curves.png and the
value head; and the trimming of a resumed run's JSONL logs. Plumbing for ``trainers/ppo.py``."""

from __future__ import annotations

import json
from pathlib import Path

from trainers.metrics import read_metrics

SAMPLES_FILE = "samples.jsonl"
PLOT_FILE = "ppo_curves.png"


def keep_lines_up_to(path: Path, step: int) -> None:
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


def write_samples(out: Path, step: int, conversations, roll, scores, n: int = 4) -> None:
    """Append the first ``n`` (prompt, response, score) of an iteration to OUT/samples.jsonl."""
    with open(out / SAMPLES_FILE, "a", encoding="utf-8") as f:
        for i in range(min(n, len(roll))):
            f.write(json.dumps({"step": step, "prompt": conversations[i], "response": roll.response_texts[i],
                                "score": float(scores[i]), "finished": bool(roll.finished[i])}, ensure_ascii=False) + "\n")


def save_value_head(out: Path, inner) -> None:
    """The PPO value head as OUT/value_head.safetensors, for inspection or reuse (a separate value backbone
    is not saved)."""
    if inner.value_head is None:
        return
    from safetensors.torch import save_file

    weights = {f"value_head.{k}": v.detach().cpu().contiguous() for k, v in inner.value_head.state_dict().items()}
    save_file(weights, str(out / "value_head.safetensors"))

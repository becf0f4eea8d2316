"""Calibration: expected calibration error and the reliability diagram, for labelers and reward models.

Predictions are probabilities in [0, 1]; targets are 0/1 outcomes (or soft labels in [0, 1]). With
``bins`` equal-width bins — bin i holds [i/bins, (i+1)/bins), and 1.0 falls in the last —

    ECE = Σ_b (n_b / N) · |mean target in b − mean prediction in b|

``labelers.evaluate`` measures a labeler against gold comparisons with it, ``trainers.preference_model``
a reward model's σ(margin) against its soft and hard labels. Pure Python (no numpy needed; numpy
arrays work as inputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence


def reliability_bins(predicted: Iterable[float], target: Iterable[float], bins: int = 10) -> list[tuple[int, float, float]]:
    """(count, mean prediction, mean target) for every bin, empty bins as (0, 0.0, 0.0)."""
    groups: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for p, y in zip(predicted, target, strict=True):
        p, y = float(p), float(y)
        groups[min(int(p * bins), bins - 1)].append((p, y))
    return [(len(g), sum(p for p, _ in g) / len(g) if g else 0.0, sum(y for _, y in g) / len(g) if g else 0.0)
            for g in groups]


def calibration_table(predicted: Iterable[float], target: Iterable[float], bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """(ECE, one ``{"bin", "count", "predicted", "target"}`` row per non-empty bin — the reliability diagram's points)."""
    table = [{"bin": b, "count": n, "predicted": conf, "target": freq}
             for b, (n, conf, freq) in enumerate(reliability_bins(predicted, target, bins)) if n]
    total = sum(row["count"] for row in table)
    ece = sum(row["count"] / total * abs(row["target"] - row["predicted"]) for row in table) if total else 0.0
    return float(ece), table


def expected_calibration_error(predicted: Iterable[float], target: Iterable[float], bins: int = 10) -> float:
    """Σ_b (n_b / N)·|mean target in b − mean prediction in b| over equal-width probability bins."""
    return calibration_table(predicted, target, bins)[0]


def plot_reliability(tables: dict[str, Sequence[dict[str, float]]], path: str | Path, *, xlabel: str,
                     ylabel: str = "observed frequency", title: str | None = None, counts: bool = False,
                     legend: str = "lower right", dpi: int = 120) -> None:
    """Reliability diagram: one line per ``{label: calibration table}`` against the diagonal of perfect
    calibration; ``counts`` writes each bin's count next to its point. Saved to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for label, table in tables.items():
        if not table:
            continue
        ax.plot([r["predicted"] for r in table], [r["target"] for r in table], "o-", label=label)
        if counts:
            for r in table:
                ax.annotate(str(r["count"]), (r["predicted"], r["target"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc=legend)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)

"""The report's pictures: matplotlib figures rendered to PNG and embedded as ``data:`` URIs (no files, no
network at view time)."""

from __future__ import annotations

import base64
import io
from typing import Sequence

DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_data_uri(fig) -> str:
    plt = _plt()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram(values: Sequence[float], *, xlabel: str, title: str, bins: int = 20, range_: tuple[float, float] = (0.0, 1.0)) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(list(values), bins=bins, range=range_, color="tab:blue", edgecolor="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def bars(labels: Sequence[str], values: Sequence[float], *, ylabel: str, title: str, ylim: tuple[float, float] | None = (0, 1)) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(labels) + 2), 3))
    ax.bar(range(len(labels)), list(values), color="tab:green")
    ax.set_xticks(range(len(labels)), [str(s)[:24] for s in labels], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def curves(panels: list[tuple[str, dict[str, tuple[list[float], list[float]]]]], *, title: str) -> str:
    """One figure with a panel per ``(y label, {series name: (steps, values)})``, steps on the x axis."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (ylabel, series) in zip(axes.flat, panels):
        for name, (xs, ys) in series.items():
            style = "o--" if name.startswith("eval") or len(xs) < 3 else "-"
            ax.plot(xs, ys, style, label=name, markersize=3)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return to_data_uri(fig)


def win_rates(judges: dict[str, dict], *, title: str) -> str:
    """Stacked win / tie / loss bars per judge, with the 95 % interval of the win rate."""
    plt = _plt()
    names = list(judges)
    fig, ax = plt.subplots(figsize=(6, 0.8 * len(names) + 1.4))
    left = [0.0] * len(names)
    for key, color in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
        values = [judges[n][key] for n in names]
        ax.barh(names, values, left=left, color=color, label=key)
        left = [a + b for a, b in zip(left, values)]
    for i, n in enumerate(names):
        lo, hi = judges[n]["win_ci95"]
        ax.errorbar([judges[n]["win"]], [i], xerr=[[judges[n]["win"] - lo], [hi - judges[n]["win"]]], fmt="none", color="black", capsize=4)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of prompts (B vs A)")
    ax.legend(loc="lower right", fontsize=7, ncol=3)
    ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def reliability(table: list[dict], ece: float) -> str:
    """The labeler's reliability diagram, drawn by :func:`labelers.calibration.plot_reliability`."""
    from labelers.calibration import plot_reliability

    buffer = io.BytesIO()
    plot_reliability({"labeler": table}, buffer, xlabel="predicted P(first is better), both orders",
                     ylabel="observed frequency (gold)", title=f"Reliability diagram (ECE {ece:.3f})", counts=True, dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

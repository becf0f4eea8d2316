"""Win / tie / loss arithmetic of ``cai eval winrate`` (pure functions, no model).

A judge gives, for each comparison, ``p`` = the probability that response B (model B's answer) is better
than response A. The outcome for B is

    win   if p ≥ 0.5 + tie_margin
    loss  if p ≤ 0.5 − tie_margin
    tie   if |p − 0.5| < tie_margin          (default tie_margin = 0.05)

For the AI labeler ``p`` is 1 − p_a of its preference record (both orders averaged); for a preference
model it is σ(r_B − r_A), the Bradley–Terry probability of its two scores. Rates are fractions of all
comparisons; the 95 % interval of the win rate is Wilson's score interval (ties count as non-wins).
"""

from __future__ import annotations

import math
from typing import Iterable

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal


def wilson_interval(k: int, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval of a binomial proportion k/n: centre (p̂ + z²/2n)/(1 + z²/n), half-width
    z/(1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/4n²). With n = 0 nothing is known: [0, 1]."""
    if n <= 0:
        return [0.0, 1.0]
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 ≤ k ≤ n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def outcome(p_b: float, tie_margin: float = 0.05) -> str:
    """"win", "tie" or "loss" for B, given p_b = P(B better than A)."""
    if abs(p_b - 0.5) < tie_margin - 1e-9:  # the tolerance keeps 0.45 and 0.55 (0.0499999… in floats) out of the ties
        return "tie"
    return "win" if p_b > 0.5 else "loss"


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def tally(p_values: Iterable[float], tie_margin: float = 0.05) -> dict:
    """{"win", "tie", "loss" (rates), "n", "wins", "ties", "losses" (counts), "win_ci95", "loss_ci95",
    "mean_p_b"} over the comparisons' p_b values."""
    ps = list(p_values)
    counts = {"win": 0, "tie": 0, "loss": 0}
    for p in ps:
        counts[outcome(p, tie_margin)] += 1
    n = len(ps)
    rate = {k: (v / n if n else 0.0) for k, v in counts.items()}
    return {**rate, "n": n, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
            "win_ci95": wilson_interval(counts["win"], n), "loss_ci95": wilson_interval(counts["loss"], n),
            "mean_p_b": (sum(ps) / n) if n else None}


def judge_summary(p_b: list[float], groups: list[list[str]], tie_margin: float = 0.05,
                  per_group_p: list[list[float]] | None = None) -> dict:
    """One judge's block of summary.json: the overall tally plus ``per_principle`` ({pid: {"win", "tie",
    "loss", "n", …}}). ``groups[i]`` are the principle ids of comparison i; ``per_group_p[i][j]`` is the
    judge's p_b under ``groups[i][j]`` (default: the overall ``p_b[i]`` for every group)."""
    block = tally(p_b, tie_margin)
    by: dict[str, list[float]] = {}
    for i, pids in enumerate(groups):
        for j, pid in enumerate(pids):
            by.setdefault(pid, []).append(per_group_p[i][j] if per_group_p is not None else p_b[i])
    block["per_principle"] = {pid: tally(values, tie_margin) for pid, values in sorted(by.items())}
    return block


def agreement(a: list[float], b: list[float], tie_margin: float = 0.05) -> float | None:
    """Fraction of comparisons on which two judges give the same outcome (win / tie / loss)."""
    if not a:
        return None
    return sum(outcome(x, tie_margin) == outcome(y, tie_margin) for x, y in zip(a, b, strict=True)) / len(a)

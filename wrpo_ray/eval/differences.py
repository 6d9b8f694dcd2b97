"""Model-against-model differences on the same prompts, with paired bootstrap intervals.

Two models' intervals against a baseline can overlap while their difference is clearly non-zero (or the other
way round): what the paper's ordering WRPO > DPO > SFT needs is an interval for the difference itself. Each
difference resamples the prompts the two models and the baseline all answered, drawing the same prompts for
all three, so the per-prompt pairing is kept:

- win rate difference: WR(A vs baseline) - WR(B vs baseline), in points;
- accuracy difference: mean correctness of A - of B, in points, over the prompts both have a checkable answer
  for;
- head to head: A's win rate against B itself (the judge's scores of A's and B's answers to the same prompt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wrpo_ray.eval.winrate import Record, bootstrap_ci, by_prompt, is_number, pairwise_win_rate


@dataclass(frozen=True)
class Difference:
    """`model` minus `other`; differences in points (percentage points), intervals at the report's confidence."""

    model: str
    other: str
    baseline: str
    num_paired: int
    win_rate_diff: float
    win_rate_diff_ci: tuple[float, float]
    head_to_head: float
    head_to_head_ci: tuple[float, float]
    accuracy_diff: float | None
    accuracy_diff_ci: tuple[float, float] | None
    num_accuracy: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def win_rate_clear(self) -> bool:
        """The interval of the win rate difference excludes 0."""
        lo, hi = self.win_rate_diff_ci
        return lo > 0.0 or hi < 0.0

    @property
    def accuracy_clear(self) -> bool:
        if self.accuracy_diff_ci is None:
            return False
        lo, hi = self.accuracy_diff_ci
        return lo > 0.0 or hi < 0.0


def later_minus_earlier(models: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of `models`, each later one against each earlier one (in pipeline order: Target, Target-SFT,
    then the preference methods, so every difference reads as what a later stage added)."""
    return [(a, b) for i, a in enumerate(models) for b in models[:i]]


def model_difference(
    model: str, other: str, baseline: str, records: Mapping[str, list[Record]], *, tie: float = 0.5,
    n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> Difference:
    a, b, base = (by_prompt(m, records[m]) for m in (model, other, baseline))
    shared = sorted(p for p in a.keys() & b.keys() & base.keys()
                    if all(is_number(x[p].get("score")) for x in (a, b, base)))
    if not shared:
        raise ValueError(f"{model!r}, {other!r} and {baseline!r} share no judged prompt")
    sa, sb, sbase = (np.array([float(x[p]["score"]) for p in shared]) for x in (a, b, base))
    boot = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}

    def wr_diff(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        return pairwise_win_rate(x, z, tie=tie) - pairwise_win_rate(y, z, tie=tie)

    def h2h(x: np.ndarray, y: np.ndarray) -> float:
        return pairwise_win_rate(x, y, tie=tie)

    checked = [p for p in shared if is_number(a[p].get("correct")) and is_number(b[p].get("correct"))]
    acc, acc_ci = None, None
    if checked:
        delta = 100.0 * np.array([float(a[p]["correct"]) - float(b[p]["correct"]) for p in checked])
        acc, acc_ci = float(delta.mean()), bootstrap_ci(np.mean, delta, **boot)
    return Difference(
        model=model, other=other, baseline=baseline, num_paired=len(shared),
        win_rate_diff=wr_diff(sa, sb, sbase), win_rate_diff_ci=bootstrap_ci(wr_diff, sa, sb, sbase, **boot),
        head_to_head=h2h(sa, sb), head_to_head_ci=bootstrap_ci(h2h, sa, sb, **boot),
        accuracy_diff=acc, accuracy_diff_ci=acc_ci, num_accuracy=len(checked),
    )


def model_differences(
    records: Mapping[str, list[Record]], baseline: str, models: Sequence[str], *, tie: float = 0.5,
    n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> list[Difference]:
    """`model_difference` for every later-minus-earlier pair of `models` that have records."""
    present = [m for m in models if m in records]
    return [model_difference(a, b, baseline, records, tie=tie, n_resamples=n_resamples, confidence=confidence,
                             seed=seed)
            for a, b in later_minus_earlier(present)]

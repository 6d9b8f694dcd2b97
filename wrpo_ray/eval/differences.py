"""Method-against-method differences on the same prompts, with paired bootstrap intervals and, for methods
trained with several seeds, the spread across seeds.

Two models' intervals against a baseline can overlap while their difference is clearly non-zero (or the other
way round): what the paper's ordering WRPO > DPO > SFT needs is an interval for the difference itself. A
method is one model or a group of models (its seeds, `eval.groups`); a difference pairs A's and B's models
(seed i with seed i, or each seed with a method of one model) and averages over the pairs:

- win rate difference: WR(A vs baseline) - WR(B vs baseline), in points;
- accuracy difference: mean correctness of A - of B, in points, over the prompts every model of the pair has
  a checkable answer for;
- head to head: A's win rate against B itself (the judge's scores of A's and B's answers to the same prompt).

The interval resamples the prompts that every model involved and the baseline answered, drawing the same
prompts for all, so the per-prompt pairing is kept; the spread across seeds is the standard deviation of the
per-pair values, which resampling prompts does not see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wrpo_ray.eval.winrate import Record, bootstrap_ci, by_prompt, is_number, pairwise_win_rate


@dataclass(frozen=True)
class Difference:
    """Method `model` minus method `other`; points (percentage points), intervals at the report's confidence."""

    model: str
    other: str
    baseline: str
    pairs: int
    num_paired: int
    win_rate_diff: float
    win_rate_diff_ci: tuple[float, float]
    win_rate_diff_per_pair: list[float]
    head_to_head: float
    head_to_head_ci: tuple[float, float]
    accuracy_diff: float | None
    accuracy_diff_ci: tuple[float, float] | None
    accuracy_diff_per_pair: list[float]
    num_accuracy: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def win_rate_clear(self) -> bool:
        """The interval of the win rate difference excludes 0."""
        return _excludes_zero(self.win_rate_diff_ci)

    @property
    def accuracy_clear(self) -> bool:
        return _excludes_zero(self.accuracy_diff_ci)

    @property
    def win_rate_diff_sd(self) -> float | None:
        return _sd(self.win_rate_diff_per_pair)

    @property
    def accuracy_diff_sd(self) -> float | None:
        return _sd(self.accuracy_diff_per_pair)


def _excludes_zero(ci: tuple[float, float] | None) -> bool:
    return ci is not None and (ci[0] > 0.0 or ci[1] < 0.0)


def _sd(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def later_minus_earlier(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of `methods`, each later one against each earlier one (in pipeline order: Target, Target-SFT,
    then the preference methods, so every difference reads as what a later stage added)."""
    return [(a, b) for i, a in enumerate(methods) for b in methods[:i]]


def seed_pairs(models: Sequence[str], others: Sequence[str]) -> list[tuple[str, str]]:
    """Which model of A is compared with which of B: seed i with seed i, or every seed with a lone model."""
    if len(others) == 1:
        return [(m, others[0]) for m in models]
    if len(models) == 1:
        return [(models[0], o) for o in others]
    if len(models) != len(others):
        raise ValueError(f"methods with {len(models)} and {len(others)} seeds cannot be paired seed by seed")
    return list(zip(models, others, strict=True))


def method_difference(
    model: str, other: str, baseline: str, records: Mapping[str, list[Record]],
    groups: Mapping[str, Sequence[str]] | None = None, *, tie: float = 0.5, n_resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0,
) -> Difference:
    groups = groups or {}
    pairs = seed_pairs(groups.get(model, [model]), groups.get(other, [other]))
    names = sorted({m for pair in pairs for m in pair} | {baseline})
    by = {m: by_prompt(m, records[m]) for m in names}
    shared = sorted(set.intersection(*(set(by[m]) for m in names)))
    shared = [p for p in shared if all(is_number(by[m][p].get("score")) for m in names)]
    if not shared:
        raise ValueError(f"{model!r}, {other!r} and {baseline!r} share no judged prompt")
    index = {m: i for i, m in enumerate(names)}
    scores = [np.array([float(by[m][p]["score"]) for p in shared]) for m in names]
    base = index[baseline]
    boot = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}

    def wr_diffs(*s: np.ndarray) -> list[float]:
        return [pairwise_win_rate(s[index[a]], s[base], tie=tie) - pairwise_win_rate(s[index[b]], s[base], tie=tie)
                for a, b in pairs]

    def h2h(*s: np.ndarray) -> float:
        return float(np.mean([pairwise_win_rate(s[index[a]], s[index[b]], tie=tie) for a, b in pairs]))

    checked = [p for p in shared if all(is_number(by[m][p].get("correct")) for pair in pairs for m in pair)]
    acc, acc_ci, acc_per_pair = None, None, []
    if checked:
        deltas = [100.0 * np.array([float(by[a][p]["correct"]) - float(by[b][p]["correct"]) for p in checked])
                  for a, b in pairs]
        acc_per_pair = [float(d.mean()) for d in deltas]
        acc = float(np.mean(acc_per_pair))
        acc_ci = bootstrap_ci(lambda *d: float(np.mean([x.mean() for x in d])), *deltas, **boot)
    per_pair = wr_diffs(*scores)
    return Difference(
        model=model, other=other, baseline=baseline, pairs=len(pairs), num_paired=len(shared),
        win_rate_diff=float(np.mean(per_pair)),
        win_rate_diff_ci=bootstrap_ci(lambda *s: float(np.mean(wr_diffs(*s))), *scores, **boot),
        win_rate_diff_per_pair=per_pair,
        head_to_head=h2h(*scores), head_to_head_ci=bootstrap_ci(h2h, *scores, **boot),
        accuracy_diff=acc, accuracy_diff_ci=acc_ci, accuracy_diff_per_pair=acc_per_pair, num_accuracy=len(checked),
    )


def method_order(models: Sequence[str], groups: Mapping[str, Sequence[str]]) -> list[str]:
    """The methods of `models` in order: a group where its first seed is, models outside groups as they are."""
    member = {m: g for g, ms in groups.items() for m in ms}
    return list(dict.fromkeys(member.get(m, m) for m in models))


def method_differences(
    records: Mapping[str, list[Record]], baseline: str, models: Sequence[str],
    groups: Mapping[str, Sequence[str]] | None = None, *, tie: float = 0.5, n_resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0,
) -> list[Difference]:
    """`method_difference` for every later-minus-earlier pair of the methods of `models` that have records.

    Raises ValueError when a group's model has no records: its seeds could no longer be paired as listed."""
    groups = dict(groups or {})
    missing = [m for ms in groups.values() for m in ms if m not in records]
    if missing:
        raise ValueError(f"no judged answers of {missing}, so their methods cannot be compared seed by seed")
    present = method_order([m for m in models if m in records], groups)
    return [method_difference(a, b, baseline, records, groups, tie=tie, n_resamples=n_resamples,
                              confidence=confidence, seed=seed)
            for a, b in later_minus_earlier(present)]

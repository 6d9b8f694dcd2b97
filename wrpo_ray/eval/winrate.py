"""Win rates against a baseline, a length-adjusted variant, bootstrap intervals and per-model reports.

All rates are percentages. Every function is deterministic; randomness only enters through an explicit seed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _paired(name_a: str, a: ArrayLike, name_b: str, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(a, name_a), _vector(b, name_b)
    if x.shape != y.shape:
        raise ValueError(f"{name_a} and {name_b} differ in length: {x.size} vs {y.size}")
    if x.size == 0:
        raise ValueError("no prompts to compare")
    return x, y


def preference_outcomes(model_scores: ArrayLike, baseline_scores: ArrayLike, *, tie: float = 0.5) -> np.ndarray:
    """Per-prompt outcome of the model against the baseline: 1 for a win, `tie` for equal scores, 0 for a loss."""
    m, b = _paired("model_scores", model_scores, "baseline_scores", baseline_scores)
    return np.where(m > b, 1.0, np.where(m < b, 0.0, float(tie)))


def pairwise_win_rate(model_scores: ArrayLike, baseline_scores: ArrayLike, *, tie: float = 0.5) -> float:
    """Percentage of prompts on which the judge scores the model above the baseline, ties counting `tie`."""
    return float(100.0 * preference_outcomes(model_scores, baseline_scores, tie=tie).mean())


def length_feature(model_lengths: ArrayLike, baseline_lengths: ArrayLike) -> np.ndarray:
    """tanh of the length difference scaled by its standard deviation (AlpacaEval 2).

    The difference is scaled, not centred, so that zero still means "same length". With no spread in the
    difference the length effect cannot be told apart from the intercept, and the feature is all zeros.
    """
    m, b = _paired("model_lengths", model_lengths, "baseline_lengths", baseline_lengths)
    diff = m - b
    std = float(diff.std())
    if std == 0.0:
        return np.zeros_like(diff)
    return np.tanh(diff / std)


def _sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z)))


def _objective(a: float, b: float, y: np.ndarray, x: np.ndarray, l2: float) -> float:
    z = a + b * x
    return float((np.logaddexp(0.0, z) - y * z).sum()) / y.size + 0.5 * l2 * b * b


def fit_logistic(
    y: np.ndarray, x: np.ndarray, *, l2: float = 1e-2, max_iter: int = 100, tol: float = 1e-10
) -> tuple[float, float]:
    """(intercept, slope) of a logistic regression of soft labels y in [0, 1] on one feature x.

    Damped Newton on the mean cross-entropy plus 0.5 * l2 * slope**2. Only the slope is penalised, so with an
    uninformative feature the intercept is exactly logit(mean(y)). The labels must not all be 0 or all be 1
    (the intercept would diverge).
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    n = y.size
    mean = float(y.sum()) / n
    if not 0.0 < mean < 1.0:
        raise ValueError("labels must not all be 0 or all be 1")
    a, b = math.log(mean / (1.0 - mean)), 0.0
    if not np.any(x):
        return a, 0.0
    xx = x * x
    current = _objective(a, b, y, x, l2)
    for _ in range(max_iter):
        p = _sigmoid(a + b * x)
        r, w = p - y, p * (1.0 - p)
        g0, g1 = float(r.sum()) / n, float(r @ x) / n + l2 * b
        h00, h01, h11 = float(w.sum()) / n, float(w @ x) / n, float(w @ xx) / n + l2
        det = h00 * h11 - h01 * h01
        if not det > 0.0:
            break
        da, db = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        step = 1.0
        candidate = _objective(a - da, b - db, y, x, l2)
        while candidate > current and step > 1e-8:
            step *= 0.5
            candidate = _objective(a - step * da, b - step * db, y, x, l2)
        if candidate > current:
            break
        a, b, current = a - step * da, b - step * db, candidate
        if max(abs(step * da), abs(step * db)) < tol:
            break
    return a, b


def length_adjusted_win_rate(
    model_scores: ArrayLike,
    baseline_scores: ArrayLike,
    model_lengths: ArrayLike,
    baseline_lengths: ArrayLike,
    *,
    tie: float = 0.5,
    l2: float = 1e-2,
) -> float:
    """Win rate with the part explained by response length regressed out (AlpacaEval 2 style).

    Fits P(model beats baseline) = sigmoid(a + b * tanh(len_diff / std(len_diff))), ties as half labels,
    and reports 100 * sigmoid(a): the predicted win rate had both responses been equally long. When every
    prompt has the same outcome there is nothing for length to explain and the raw win rate is returned.
    """
    y = preference_outcomes(model_scores, baseline_scores, tie=tie)
    x = length_feature(model_lengths, baseline_lengths)
    if x.shape != y.shape:
        raise ValueError(f"scores and lengths differ in length: {y.size} vs {x.size}")
    mean = float(y.mean())
    if np.all(y == y[0]) or not 0.0 < mean < 1.0:
        return 100.0 * mean
    intercept, _ = fit_logistic(y, x, l2=l2)
    return float(100.0 * _sigmoid(intercept))


def bootstrap_ci(
    fn: Callable[..., float],
    *arrays: ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of fn(*arrays), resampling prompts with replacement.

    The same indices are drawn from every array, so per-prompt pairs (model, baseline, lengths) stay together.
    """
    cols = [np.asarray(a) for a in arrays]
    if not cols:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(cols[0])
    if n == 0 or any(len(c) != n for c in cols):
        raise ValueError("arrays must be non-empty and of equal length")
    if not 0.0 < confidence < 1.0 or n_resamples < 1:
        raise ValueError("need 0 < confidence < 1 and n_resamples >= 1")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        stats[i] = fn(*(c[idx] for c in cols))
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and math.isfinite(float(v))


def accuracy_by_skill(correct: Sequence[float | bool | None], skills: Sequence[str]) -> dict[str, float]:
    """Mean correctness per skill, as a percentage, sorted by skill. Missing (None/NaN) entries are skipped;
    a skill with none left is omitted. Graded correctness in [0, 1] averages as is."""
    if len(correct) != len(skills):
        raise ValueError(f"correct and skills differ in length: {len(correct)} vs {len(skills)}")
    by_skill: dict[str, list[float]] = defaultdict(list)
    for c, s in zip(correct, skills, strict=True):
        if is_number(c):
            by_skill[str(s)].append(float(c))
    return {s: 100.0 * float(np.mean(v)) for s, v in sorted(by_skill.items())}


@dataclass(frozen=True)
class ModelReport:
    """One model's results against the baseline. Rates and accuracies are percentages."""

    model: str
    baseline: str
    num_prompts: int
    num_paired: int
    win_rate: float
    win_rate_ci: tuple[float, float]
    la_win_rate: float
    la_win_rate_ci: tuple[float, float]
    wins: int
    ties: int
    losses: int
    mean_length: float
    accuracy: dict[str, float] = field(default_factory=dict)
    overall_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Record = Mapping[str, Any]


def _group(records: Mapping[str, Iterable[Record]] | Iterable[Record]) -> dict[str, list[Record]]:
    if isinstance(records, Mapping):
        return {str(m): list(rs) for m, rs in records.items()}
    grouped: dict[str, list[Record]] = {}
    for r in records:
        grouped.setdefault(str(r["model"]), []).append(r)
    return grouped


def by_prompt(model: str, records: list[Record]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for r in records:
        pid = str(r["prompt_id"])
        if pid in out:
            raise ValueError(f"model {model!r} has more than one record for prompt {pid!r}")
        out[pid] = r
    return out


def _length(r: Record) -> float:
    length = r.get("length")
    return float(length) if length is not None else float(len(r.get("response") or ""))


def _overall_accuracy(records: list[Record]) -> float | None:
    values = [float(r["correct"]) for r in records if is_number(r.get("correct"))]
    return 100.0 * float(np.mean(values)) if values else None


def _skill_accuracy(records: list[Record]) -> dict[str, float]:
    with_skill = [r for r in records if r.get("skill") is not None]
    return accuracy_by_skill([r.get("correct") for r in with_skill], [str(r["skill"]) for r in with_skill])


def _model_report(
    model: str, records: list[Record], baseline: str, base: dict[str, Record], *, tie: float, l2: float,
    n_resamples: int, confidence: float, seed: int,
) -> ModelReport:
    own = by_prompt(model, records)
    shared = sorted(pid for pid in own.keys() & base.keys()
                    if is_number(own[pid].get("score")) and is_number(base[pid].get("score")))
    if not shared:
        raise ValueError(f"model {model!r} shares no judged prompt with baseline {baseline!r}")
    ms = np.array([float(own[p]["score"]) for p in shared])
    bs = np.array([float(base[p]["score"]) for p in shared])
    ml = np.array([_length(own[p]) for p in shared])
    bl = np.array([_length(base[p]) for p in shared])

    def wr(m: np.ndarray, b: np.ndarray) -> float:
        return pairwise_win_rate(m, b, tie=tie)

    def lc(m: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        return length_adjusted_win_rate(m, b, x, y, tie=tie, l2=l2)

    boot = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    return ModelReport(
        model=model,
        baseline=baseline,
        num_prompts=len(own),
        num_paired=len(shared),
        win_rate=wr(ms, bs),
        win_rate_ci=bootstrap_ci(wr, ms, bs, **boot),
        la_win_rate=lc(ms, bs, ml, bl),
        la_win_rate_ci=bootstrap_ci(lc, ms, bs, ml, bl, **boot),
        wins=int(np.sum(ms > bs)),
        ties=int(np.sum(ms == bs)),
        losses=int(np.sum(ms < bs)),
        mean_length=float(np.mean([_length(r) for r in records])),
        accuracy=_skill_accuracy(records),
        overall_accuracy=_overall_accuracy(records),
    )


def build_report(
    records: Mapping[str, Iterable[Record]] | Iterable[Record],
    baseline: str,
    *,
    tie: float = 0.5,
    l2: float = 1e-2,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, ModelReport]:
    """Per-model reports against `baseline`, in the order the models first appear (the baseline included).

    `records` maps a model name to its per-prompt records, or is a flat iterable whose records carry `model`.
    Each record has `prompt_id`, `score` (judge score), and optionally `skill`, `response`, `length` (defaults
    to the response's characters) and `correct` (bool or graded in [0, 1]; None when not checkable).
    Win rates use the prompts both the model and the baseline have a finite score for; accuracy and mean
    length use all of the model's records. Every model's bootstrap uses the same seed.
    """
    grouped = _group(records)
    if baseline not in grouped:
        raise ValueError(f"baseline {baseline!r} not among the models: {sorted(grouped)}")
    base = by_prompt(baseline, grouped[baseline])
    return {
        model: _model_report(model, rs, baseline, base, tie=tie, l2=l2, n_resamples=n_resamples,
                             confidence=confidence, seed=seed)
        for model, rs in grouped.items()
    }

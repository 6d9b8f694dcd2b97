"""Selection of preferred responses from scored samples: pure logic, no Ray.

Ties are broken deterministically: higher reward first, then model name, then sample index, so two runs
over the same scores select the same response.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any


def _valid(samples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in samples:
        r = s.get("reward")
        if r is None or not isinstance(r, (int, float)) or math.isnan(r) or math.isinf(r):
            continue
        out.append(s)
    return out


def rank(samples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples with a finite reward, best first, ties broken by (model, sample_idx)."""
    return sorted(_valid(samples), key=lambda s: (-float(s["reward"]), str(s["model"]), int(s["sample_idx"])))


def select_best(samples: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest-reward sample of one prompt, or None if no sample has a finite reward."""
    ranked = rank(samples)
    return ranked[0] if ranked else None


def select_best_and_worst(samples: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(best, worst) of one prompt, for y_wt / y_l; None when fewer than two scored samples or all tied."""
    ranked = rank(samples)
    if len(ranked) < 2 or float(ranked[0]["reward"]) == float(ranked[-1]["reward"]):
        return None
    return ranked[0], ranked[-1]


def win_shares(winners: Iterable[str], models: Sequence[str]) -> dict[str, float]:
    """Share of prompts won by each model (the paper's Table 1); every configured model is listed."""
    counts = Counter(winners)
    total = sum(counts.values())
    return {m: (counts.get(m, 0) / total if total else 0.0) for m in models}

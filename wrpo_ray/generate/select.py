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


def win_shares(winners: Iterable[str], models: Sequence[str]) -> dict[str, float]:
    """Share of prompts won by each model (the paper's Table 1); every configured model is listed."""
    counts = Counter(winners)
    total = sum(counts.values())
    return {m: (counts.get(m, 0) / total if total else 0.0) for m in models}

"""Selection of preferred responses from scored samples: pure logic, no Ray.

Ties are broken deterministically: higher reward first, then model name, then sample index, so two runs
over the same scores select the same response.
"""

from __future__ import annotations

import json
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


CUT_AT_MAX_TOKENS = "length"
"""vLLM's `finish_reason` of a sample that stopped at `max_tokens`."""


def is_truncated(sample: dict[str, Any]) -> bool:
    return sample.get("finish_reason") == CUT_AT_MAX_TOKENS


def selection(prompt: dict[str, Any], samples: list[dict[str, Any]], keep_truncated: bool = False
              ) -> dict[str, Any] | None:
    """The `SELECTIONS` row of one prompt (`prompt_id, prompt, messages, metadata`) from its scored samples,
    or None when none is a candidate. Samples that stopped at `max_tokens` are not candidates unless
    `keep_truncated`."""
    if not keep_truncated:
        samples = [s for s in samples if not is_truncated(s)]
    ranked = rank(samples)
    if not ranked:
        return None
    best, worst = ranked[0], ranked[-1]
    by_model: dict[str, list[float]] = {}
    for s in ranked:
        by_model.setdefault(s["model"], []).append(round(float(s["reward"]), 6))
    return {
        "prompt_id": prompt["prompt_id"], "prompt": prompt["prompt"], "messages": prompt["messages"],
        "metadata": prompt["metadata"], "y_ws": best["response"], "reward_ws": float(best["reward"]),
        "source_model": best["model"], "source_sample_idx": best["sample_idx"],
        "num_tokens_ws": best["num_tokens"], "num_candidates": len(ranked),
        "rewards_by_model": json.dumps(by_model, sort_keys=True),
        "y_worst": worst["response"], "reward_worst": float(worst["reward"]), "worst_model": worst["model"],
    }

"""Per-prompt decisions of the generation stage, as functions over the `TAGGED` rows of one prompt
(`map_key_groups`).

A group holds one prompt of the stage's input (a row without a model) and every committed sample of it. Before
generation, `pending_pairs` says which sources still owe it samples; after, `resolve_prompt` keeps each pair's
samples from its newest complete attempt, selects y_ws and sets aside what cannot be used, with a reason.
Both run on the cluster, in groups of one prompt, so the driver never holds the prompts or the samples.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from wrpo_ray.data.schemas import PROMPTS, QUARANTINE, SCORED, SELECTIONS
from wrpo_ray.generate.commit import complete_attempts, rows_to_keep
from wrpo_ray.generate.select import is_truncated, selection

PENDING = pa.schema([*PROMPTS, ("model", pa.string())])
"""A prompt and the source that still has to generate its samples."""

SAMPLE, SELECTION, QUARANTINED = "sample", "selection", "quarantine"
RESOLVED = pa.unify_schemas([pa.schema([("kind", pa.string())]), SCORED, SELECTIONS, QUARANTINE])
"""One output row of the stage: a kept sample, a selection or a quarantine row (`kind`), in one table so
one shuffle decides all three; each is written out with its own schema's columns."""

_PROMPT_FIELDS = PROMPTS.names


def _split(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    prompt = next((r for r in rows if r["model"] is None), None)
    return prompt, [r for r in rows if r["model"] is not None]


def pending_pairs(rows: list[dict[str, Any]], samples_per_model: dict[str, int]) -> list[dict[str, Any]]:
    """The (prompt, source) pairs of one prompt that no attempt completed, as `PENDING` rows."""
    prompt, committed = _split(rows)
    if prompt is None:
        return []
    done = complete_attempts(committed, samples_per_model)
    head = {k: prompt[k] for k in _PROMPT_FIELDS}
    return [{**head, "model": m} for m in samples_per_model if done.get(m) is None]


def _quarantine(stage: str, prompt_id: str, reason: str, model: str | None = None,
                sample_idx: int | None = None, raw: str | None = None) -> dict[str, Any]:
    return {"kind": QUARANTINED, "stage": stage, "prompt_id": prompt_id, "model": model, "sample_idx": sample_idx,
            "reason": reason, "raw": raw}


def resolve_prompt(rows: list[dict[str, Any]], samples_per_model: dict[str, int], keep_truncated: bool = False
                   ) -> list[dict[str, Any]]:
    """One prompt's kept samples, its selection and its quarantine rows, as `RESOLVED` rows (`kind` set).

    Set aside: samples that carry an error (quarantined by the model or the scorer), pairs no attempt completed,
    samples cut at `max_tokens` (unless `keep_truncated`; they stay in `samples/`), and a prompt left with no
    candidate at all. Committed rows of a prompt outside the input are ignored (`scored/` is cleared whenever
    the input changes, so there are none).
    """
    prompt, committed = _split(rows)
    if prompt is None:
        return []
    pid = prompt["prompt_id"]
    chosen = complete_attempts(committed, samples_per_model)
    out: list[dict[str, Any]] = []
    for model in sorted(m for m, a in chosen.items() if a is None):
        out.append(_quarantine("generate", pid, "incomplete_samples: no attempt wrote all of this pair's samples",
                               model))
    good = []
    for r in sorted(rows_to_keep(committed, chosen), key=lambda r: (r["model"], r["sample_idx"])):
        if r["error"] is not None:
            out.append(_quarantine("generate", pid, r["error"], r["model"], r["sample_idx"],
                                   (r["response"] or "")[:2000]))
            continue
        good.append(r)
        out.append({**{k: r[k] for k in SCORED.names}, "kind": SAMPLE})
        if is_truncated(r) and not keep_truncated:
            out.append(_quarantine("select", pid, f"truncated_sample: stopped at max_tokens ({r['num_tokens']} "
                                   "tokens), not selectable", r["model"], r["sample_idx"]))
    chosen_row = selection(prompt, good, keep_truncated)
    if chosen_row is None:
        out.append(_quarantine("select", pid, "no_selectable_samples: every sample failed"
                               + ("" if keep_truncated else " or was truncated")))
    else:
        out.append({**chosen_row, "kind": SELECTION})
    return out

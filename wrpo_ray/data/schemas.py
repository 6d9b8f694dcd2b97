"""Arrow schemas of what the stages exchange and persist (documented in docs/schemas.md)."""

from __future__ import annotations

import pyarrow as pa

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

PROMPTS = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("messages", MESSAGES),
    ("metadata", pa.string()),
])

GENERATED = pa.schema([
    *PROMPTS,
    ("model", pa.string()),
    ("sample_idx", pa.int32()),
    ("response", pa.string()),
    ("num_tokens", pa.int32()),
    ("prompt_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("gen_seconds", pa.float64()),
    ("error", pa.string()),
])

SCORED = pa.schema([*GENERATED, ("reward", pa.float64())])

SELECTIONS = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("messages", MESSAGES),
    ("metadata", pa.string()),
    ("y_ws", pa.string()),
    ("reward_ws", pa.float64()),
    ("source_model", pa.string()),
    ("source_sample_idx", pa.int32()),
    ("num_tokens_ws", pa.int32()),
    ("num_candidates", pa.int32()),
    ("rewards_by_model", pa.string()),
    ("y_worst", pa.string()),
    ("reward_worst", pa.float64()),
    ("worst_model", pa.string()),
])

QUARANTINE = pa.schema([
    ("stage", pa.string()),
    ("source", pa.string()),
    ("row_index", pa.int64()),
    ("prompt_id", pa.string()),
    ("model", pa.string()),
    ("sample_idx", pa.int32()),
    ("reason", pa.string()),
    ("raw", pa.string()),
])

PREFERENCE = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("messages", MESSAGES),
    ("y_ws", pa.string()), ("y_wt", pa.string()), ("y_l", pa.string()),
    ("reward_ws", pa.float64()), ("reward_wt", pa.float64()), ("reward_l", pa.float64()),
    ("source_model", pa.string()), ("metadata", pa.string()),
])
"""Preference quadruples (x, y_ws, y_wt, y_l) that the pipeline builds for WRPO."""

TOKENIZED = pa.schema([
    ("row", pa.int64()),
    ("prompt_id", pa.string()),
    ("input_ids", pa.list_(pa.list_(pa.int32()))),
    ("labels", pa.list_(pa.list_(pa.int32()))),
    ("num_response_tokens", pa.list_(pa.int32())),
    ("ref_logps", pa.list_(pa.float64())),
    ("prompt_truncated", pa.bool_()),
    ("responses_truncated", pa.int32()),
    ("error", pa.string()),
])
"""Training rows after the chat template: one sequence per response; `row` is the example's input order."""

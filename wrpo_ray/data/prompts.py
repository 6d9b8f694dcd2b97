"""Prompt input: JSONL, Parquet or a `datasets` directory (one Dataset, or a DatasetDict and a split), validated
row by row.

Valid rows become `{prompt_id, prompt, messages, metadata}`. Every other row goes to quarantine with a
reason, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from wrpo_ray.data.schemas import PROMPTS

ROLES = frozenset({"system", "user", "assistant"})


class InputError(ValueError):
    """Input that cannot be read at all, or bad rows under `strict`."""


def derive_prompt_id(messages: list[dict[str, str]]) -> str:
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if line.strip():
                row, error = parse_json_line(line)
                yield i, row, error, line.rstrip("\n")


def _iter_table_rows(rows: Iterator[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any], None, str]]:
    for i, row in enumerate(rows):
        yield i, row, None, json.dumps(row, default=str)[:2000]


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets`' `save_to_disk`: one Dataset, or a DatasetDict of splits."""
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    return path.is_dir() and any((path / m).exists() for m in markers)


def _load_split(path: Path, split: str) -> Any:
    """The Dataset saved at `path`; of a DatasetDict (the paper's released data), its split `split`."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    if not isinstance(ds, datasets.DatasetDict):
        return ds
    if split not in ds:
        raise InputError(f"{path}: a DatasetDict without a split {split!r}; available splits: {sorted(ds)}")
    return ds[split]


def iter_input_rows(path: Path, split: str = "train") -> Iterator[tuple[int, dict[str, Any] | None, str | None, str]]:
    """`(row_index, row or None, error or None, raw text)` for every row of a prompt or preference input.

    `split` picks the split of a saved DatasetDict and is ignored by every other input.
    """
    if _is_saved_dataset(path):
        return _iter_table_rows(iter(_load_split(path, split)))
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        import pyarrow.parquet as pq

        return _iter_table_rows(iter(pq.read_table(path).to_pylist()))
    if path.suffix in {".jsonl", ".json"}:
        return _iter_jsonl(path)
    raise InputError(f"{path}: unsupported prompt input (use .jsonl, .parquet or a datasets directory)")


def _messages_of(row: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str | None]:
    """The chat of a row, or a quarantine reason."""
    if "messages" in row and row["messages"] is not None:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            return None, "invalid_messages: expected a non-empty list of {role, content}"
        out = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ROLES:
                return None, f"invalid_messages: turn {j} has no valid role"
            if not isinstance(m.get("content"), str):
                return None, f"invalid_messages: turn {j} content is not text"
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "user":
            return None, "invalid_messages: the last turn must be a user turn"
        if not out[-1]["content"].strip():
            return None, "empty_prompt"
        return out, None
    if "prompt" not in row or row["prompt"] is None:
        return None, "missing_prompt: no 'prompt' or 'messages' field"
    if isinstance(row["prompt"], dict):
        return _messages_of({"messages": [row["prompt"]]})
    if not isinstance(row["prompt"], str):
        return None, f"non_text_prompt: prompt is {type(row['prompt']).__name__}"
    if not row["prompt"].strip():
        return None, "empty_prompt"
    return [{"role": "user", "content": row["prompt"]}], None


CHECKED = pa.schema([
    *PROMPTS,
    ("group_key", pa.string()),
    ("content_key", pa.string()),
    ("source", pa.string()),
    ("row_index", pa.int64()),
    ("reason", pa.string()),
    ("raw", pa.string()),
])
"""A validated input row: a prompt (`reason` null) or a row to quarantine (`reason` set)."""


def parse_json_line(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """A JSONL line as an object, or the reason it is not one."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid_json: {e.msg} at column {e.colno}"
    if not isinstance(row, dict):
        return None, f"invalid_row: expected a JSON object, got {type(row).__name__}"
    return row, None


def check_row(row: dict[str, Any] | None, error: str | None, *, max_prompt_chars: int) -> dict[str, Any]:
    """One input row as `{prompt_id, prompt, messages, metadata, content_key}`, or `{reason}` to quarantine it.

    Checks that need other rows (two rows with one prompt_id) are `first_of_each_id`'s.
    """
    if error is not None or row is None:
        return {"reason": error or "unreadable"}
    messages, reason = _messages_of(row)
    if reason is not None:
        return {"reason": reason}
    n_chars = sum(len(m["content"]) for m in messages)
    if n_chars > max_prompt_chars:
        return {"reason": f"prompt_too_long: {n_chars} chars > {max_prompt_chars}"}
    content_key = derive_prompt_id(messages)
    pid = row.get("prompt_id")
    if pid is None:
        pid = content_key
    elif isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        return {"reason": f"invalid_prompt_id: {pid!r}"}
    metadata = {k: v for k, v in row.items() if k not in {"prompt_id", "prompt", "messages"}}
    return {"prompt_id": str(pid), "prompt": messages[-1]["content"], "messages": messages,
            "metadata": json.dumps(metadata, default=str, sort_keys=True), "content_key": content_key}


def check_batch(batch: pa.Table, max_prompt_chars: int) -> pa.Table:
    """Ray Data map over raw rows (`source, row_index, raw` JSON text): every row checked, as `CHECKED`."""
    out = []
    for source, index, raw in zip(batch["source"].to_pylist(), batch["row_index"].to_pylist(),
                                  batch["raw"].to_pylist(), strict=True):
        row, error = parse_json_line(raw)
        checked = check_row(row, error, max_prompt_chars=max_prompt_chars)
        if checked.get("reason") is None:
            checked["group_key"] = "id:" + checked["prompt_id"]
        else:
            checked["group_key"] = f"row:{index}:{source}"
            checked["raw"] = raw[:2000]
        out.append({**checked, "source": source, "row_index": index})
    return pa.Table.from_pylist(out, schema=CHECKED)


def first_of_each_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `CHECKED` rows of one `group_key` (a prompt_id, or one rejected row): the first (by source, row) stays
    as it is, every later one is quarantined as a repeat of it (same content) or a clash (different content)."""
    if len(rows) == 1:
        return rows
    rows = sorted(rows, key=lambda r: (r["source"], r["row_index"]))
    first = rows[0]
    for r in rows[1:]:
        kind = "duplicate_row: same prompt_id {!r} and content as" if r["content_key"] == first["content_key"] \
            else "duplicate_prompt_id: {!r} already used by a different prompt at"
        r["reason"] = f"{kind.format(r['prompt_id'])} row {first['row_index']} of {first['source']}"
        r["raw"] = json.dumps({"prompt_id": r["prompt_id"], "messages": r["messages"]}, ensure_ascii=False)[:2000]
    return rows

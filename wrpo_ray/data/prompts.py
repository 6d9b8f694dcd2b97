"""Prompt input: JSONL, Parquet or a `datasets` directory (one Dataset, or a DatasetDict and a split), validated
row by row.

Valid rows become `{prompt_id, prompt, messages, metadata}`. Every other row goes to quarantine with a
reason, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = frozenset({"system", "user", "assistant"})


class InputError(ValueError):
    """Input that cannot be read at all, or bad rows under `strict`."""


@dataclass
class PromptBatch:
    """The result of reading and validating one prompt source."""

    valid: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0

    def counts(self) -> dict[str, int]:
        return {"in": self.rows_in, "out": len(self.valid), "quarantined": len(self.quarantined)}


def derive_prompt_id(messages: list[dict[str, str]]) -> str:
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, None, f"invalid_json: {e.msg} at column {e.colno}", line.rstrip("\n")
                continue
            if not isinstance(row, dict):
                yield i, None, f"invalid_row: expected a JSON object, got {type(row).__name__}", line.rstrip("\n")
                continue
            yield i, row, None, line.rstrip("\n")


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


def validate_rows(
    rows: Iterator[tuple[int, dict[str, Any] | None, str | None, str]],
    *,
    source: str,
    max_prompt_chars: int,
) -> PromptBatch:
    batch = PromptBatch()
    seen: dict[str, str] = {}

    def quarantine(index: int, reason: str, raw: str) -> None:
        batch.quarantined.append({"source": source, "row_index": index, "reason": reason, "raw": raw[:2000]})

    for index, row, error, raw in rows:
        batch.rows_in += 1
        if error is not None or row is None:
            quarantine(index, error or "unreadable", raw)
            continue
        messages, reason = _messages_of(row)
        if reason is not None:
            quarantine(index, reason, raw)
            continue
        n_chars = sum(len(m["content"]) for m in messages)
        if n_chars > max_prompt_chars:
            quarantine(index, f"prompt_too_long: {n_chars} chars > {max_prompt_chars}", raw)
            continue
        pid = row.get("prompt_id")
        if pid is None:
            pid = derive_prompt_id(messages)
        elif isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
            quarantine(index, f"invalid_prompt_id: {pid!r}", raw)
            continue
        pid = str(pid)
        content_key = derive_prompt_id(messages)
        if pid in seen:
            if seen[pid] == content_key:
                quarantine(index, f"duplicate_row: same prompt_id {pid!r} and content as an earlier row", raw)
            else:
                quarantine(index, f"duplicate_prompt_id: {pid!r} already used by a different prompt", raw)
            continue
        seen[pid] = content_key
        metadata = {k: v for k, v in row.items() if k not in {"prompt_id", "prompt", "messages"}}
        batch.valid.append(
            {
                "prompt_id": pid,
                "prompt": messages[-1]["content"],
                "messages": messages,
                "metadata": json.dumps(metadata, default=str, sort_keys=True),
            }
        )
    return batch


def read_prompts(
    path: str | Path, *, max_prompt_chars: int, strict: bool = False, split: str = "train"
) -> PromptBatch:
    """Read and validate prompts; with `strict`, any bad row raises `InputError` listing the first few.

    A prompt given as one message (`{"role": "user", "content": ...}`, as in the paper's released data) is a
    one-turn chat; `split` picks the split of a saved DatasetDict.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"prompt input {path} does not exist")
    batch = validate_rows(iter_input_rows(path, split), source=str(path), max_prompt_chars=max_prompt_chars)
    if strict and batch.quarantined:
        head = "; ".join(f"row {q['row_index']}: {q['reason']}" for q in batch.quarantined[:5])
        raise InputError(f"{len(batch.quarantined)} bad prompt rows in {path} (strict mode): {head}")
    return batch

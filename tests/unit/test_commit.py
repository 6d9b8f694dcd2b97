"""Committed batches of the generation stage: which pairs a resume keeps, and which rows it reads back."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from wrpo_ray.data.schemas import SCORED
from wrpo_ray.generate.commit import (
    as_tagged,
    attempt_of,
    commit_batch,
    committed_files,
    complete_attempts,
    rows_to_keep,
    start_attempt,
)


def _rows(pid: str, model: str, idxs: list[int], error: str | None = None) -> list[dict]:
    return [{
        "prompt_id": pid, "prompt": "p", "messages": [{"role": "user", "content": "p"}], "metadata": "{}",
        "model": model, "sample_idx": i, "response": None if error else f"{pid}-{model}-{i}", "num_tokens": 1,
        "prompt_tokens": 1, "finish_reason": None if error else "stop", "gen_seconds": 0.0, "error": error,
        "reward": 0.0 if error is None else None,
    } for i in idxs]


def _commit(d: Path, attempt: int, rows: list[dict]) -> None:
    out = commit_batch(pa.Table.from_pylist(rows, schema=SCORED), str(d), attempt)
    assert out["rows"].to_pylist() == [len(rows)]


def _committed(d: Path) -> list[dict]:
    """What a plan reads back: every committed row tagged with its attempt and file."""
    import pyarrow.parquet as pq

    rows = []
    for f in committed_files(d):
        t = pq.read_table(f)
        rows += as_tagged(t.append_column("path", pa.array([str(f)] * t.num_rows))).to_pylist()
    return rows


def _by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["prompt_id"], []).append(r)
    return out


def test_start_attempt_counts_and_clears_on_new_fingerprint(tmp_path: Path) -> None:
    d = tmp_path / "scored"
    assert start_attempt(d, "fp1") == 0
    _commit(d, 0, _rows("a", "m", [0, 1]))
    assert start_attempt(d, "fp1") == 1
    assert len(committed_files(d)) == 1
    assert start_attempt(d, "fp2") == 0
    assert committed_files(d) == []


def test_complete_split_and_errored_pairs(tmp_path: Path) -> None:
    d = tmp_path / "scored"
    start_attempt(d, "fp")
    _commit(d, 0, _rows("a", "m", [0, 1, 2]))
    _commit(d, 0, _rows("b", "m", [0]))                 # b's samples split across two batches ...
    _commit(d, 0, _rows("c", "m", [0], error="prompt_too_long_for_model: 9 > 8"))
    _commit(d, 0, _rows("a", "n", [0, 1]))
    groups = _by_prompt(_committed(d))
    per_model = {"m": 3, "n": 2}
    assert complete_attempts(groups["a"], per_model) == {"m": 0, "n": 0}
    assert complete_attempts(groups["b"], per_model) == {"m": None}   # ... and only the first one was written
    assert complete_attempts(groups["c"], per_model) == {"m": 0}


def test_resumed_pair_is_read_from_its_newest_complete_attempt_only(tmp_path: Path) -> None:
    d = tmp_path / "scored"
    start_attempt(d, "fp")
    _commit(d, 0, _rows("a", "m", [0, 1]))
    _commit(d, 0, _rows("b", "m", [1]))
    start_attempt(d, "fp")
    _commit(d, 1, _rows("b", "m", [0, 1]))
    groups = _by_prompt(_committed(d))
    chosen = {pid: complete_attempts(rows, {"m": 2}) for pid, rows in groups.items()}
    assert chosen == {"a": {"m": 0}, "b": {"m": 1}}
    kept = [r for pid, rows in groups.items() for r in rows_to_keep(rows, chosen[pid])]
    assert sorted((r["prompt_id"], r["sample_idx"], r["attempt"]) for r in kept) == [
        ("a", 0, 0), ("a", 1, 0), ("b", 0, 1), ("b", 1, 1)]


def test_a_batch_committed_twice_is_read_once(tmp_path: Path) -> None:
    """A commit task retried after its file was written (its node lost before it returned) leaves the batch
    twice in the same attempt; one copy is read back."""
    d = tmp_path / "scored"
    start_attempt(d, "fp")
    _commit(d, 0, _rows("a", "m", [0, 1]))
    _commit(d, 0, _rows("a", "m", [0, 1]))
    rows = _committed(d)
    assert len(rows) == 4
    chosen = complete_attempts(rows, {"m": 2})
    kept = rows_to_keep(rows, chosen)
    assert sorted(r["sample_idx"] for r in kept) == [0, 1]
    assert len({r["file"] for r in kept}) == 1


def test_stray_file_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "scored"
    start_attempt(d, "fp")
    _commit(d, 0, _rows("a", "m", [0]))
    (d / "attempt-x.parquet").write_text("")
    (d / ".attempt-0000-ab.parquet.tmp").write_text("")
    assert len(committed_files(d)) == 1                  # neither is a committed file name
    with pytest.raises(ValueError, match="unexpected file"):
        attempt_of(d / "attempt-x.parquet")

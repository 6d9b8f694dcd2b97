"""Committed batches of the generation stage: which pairs a resume keeps, and which rows it reads back."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from wrpo_ray.data.schemas import SCORED
from wrpo_ray.generate.commit import commit_batch, keep_rows, scan, start_attempt


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


def test_start_attempt_counts_and_clears_on_new_fingerprint(tmp_path: Path) -> None:
    d = tmp_path / "scored"
    assert start_attempt(d, "fp1") == 0
    _commit(d, 0, _rows("a", "m", [0, 1]))
    assert start_attempt(d, "fp1") == 1
    assert len(scan(d, {"m": 2}).files) == 1
    assert start_attempt(d, "fp2") == 0
    assert scan(d, {"m": 2}).files == []


def test_scan_complete_split_and_errored_pairs(tmp_path: Path) -> None:
    d = tmp_path / "scored"
    start_attempt(d, "fp")
    _commit(d, 0, _rows("a", "m", [0, 1, 2]))
    _commit(d, 0, _rows("b", "m", [0]))                 # b's samples split across two batches ...
    _commit(d, 0, _rows("c", "m", [0], error="prompt_too_long_for_model: 9 > 8"))
    _commit(d, 0, _rows("a", "n", [0, 1]))
    state = scan(d, {"m": 3, "n": 2})
    assert state.complete == {("a", "m"): 0, ("c", "m"): 0, ("a", "n"): 0}
    assert state.incomplete == {("b", "m")}              # ... and only the first one was written
    rows = [{"prompt_id": p} for p in ("a", "b", "c")]
    assert [r["prompt_id"] for r in state.pending(rows, "m")] == ["b"]
    assert [r["prompt_id"] for r in state.pending(rows, "n")] == ["b", "c"]
    assert state.overrides == {("b", "m"): None}


def test_resumed_pair_is_read_from_its_newest_complete_attempt_only(tmp_path: Path) -> None:
    d = tmp_path / "scored"
    start_attempt(d, "fp")
    _commit(d, 0, _rows("a", "m", [0, 1]))
    _commit(d, 0, _rows("b", "m", [1]))
    start_attempt(d, "fp")
    _commit(d, 1, _rows("b", "m", [0, 1]))
    state = scan(d, {"m": 2})
    assert state.complete == {("a", "m"): 0, ("b", "m"): 1}
    assert state.incomplete == set()
    assert state.overrides == {("b", "m"): 1}

    import pyarrow.parquet as pq

    kept = []
    for f in state.files:
        t = pq.read_table(f)
        t = t.append_column("path", pa.array([str(f)] * t.num_rows))
        kept.append(keep_rows(t, state.overrides))
    got = sorted((r["prompt_id"], r["sample_idx"]) for r in pa.concat_tables(kept).to_pylist())
    assert got == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]


def test_stray_file_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "scored"
    start_attempt(d, "fp")
    _commit(d, 0, _rows("a", "m", [0]))
    (d / "attempt-x.parquet").write_text("")
    state = scan(d, {"m": 1})                            # not a committed file name: ignored by the scan
    assert len(state.files) == 1
    with pytest.raises(ValueError, match="unexpected file"):
        keep_rows(pa.table({"prompt_id": ["a"], "model": ["m"], "path": [str(d / "attempt-x.parquet")]}), {})

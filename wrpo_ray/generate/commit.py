"""Committed batches of scored samples: what makes an interrupted generation stage resumable.

The last step of the generation plan writes every scored batch as its own Parquet file in `scored/`,
to a hidden temporary name first and then renamed, so a file is either whole or absent. A re-run of the
stage reads which (prompt, model) pairs are complete there and sends only the others to the vLLM pools;
on a spot cluster that loses a node mid-stage, the work already scored is kept.

A pair is complete when one attempt holds every sample index `0..n-1` of it, or its error row (a prompt
too long for that model, quarantined). Ray Data may split a pair's samples across two batches, so an
attempt can leave a pair half-written; such a pair is generated again whole and only the newest complete
attempt of each pair is read back, one row per sample index, so no sample is ever counted twice (a commit
task retried after its file was written leaves the batch there twice).

Which pairs are complete is decided per prompt inside Ray Data plans (`complete_attempts`, in per-prompt
groups), never by collecting `scored/` in the driver: a resume of a million prompts costs the driver no memory.

`scored/_run.json` records a fingerprint of the stage's settings and prompts; when it differs, `scored/`
is cleared, so a changed config never mixes old samples with new ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from wrpo_ray.data.io import write_json
from wrpo_ray.data.schemas import SCORED

RUN_FILE = "_run.json"
_PART = re.compile(r"^attempt-(\d{4,})-[0-9a-f]+\.parquet$")


def start_attempt(scored_dir: Path, fingerprint: str) -> int:
    """Prepare `scored_dir` for a new attempt and return its number (0 for a fresh start)."""
    run_file = scored_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    if previous is None or previous.get("fingerprint") != fingerprint:
        shutil.rmtree(scored_dir, ignore_errors=True)
        previous = {"fingerprint": fingerprint, "attempts": 0}
    scored_dir.mkdir(parents=True, exist_ok=True)
    attempt = int(previous["attempts"])
    write_json({"fingerprint": fingerprint, "attempts": attempt + 1}, run_file)
    return attempt


def commit_batch(batch: pa.Table, scored_dir: str, attempt: int) -> pa.Table:
    """Ray Data task at the end of the plan: persists one scored batch and returns its row count.

    A task, not an actor, so it holds no CPU while the vLLM pools start or run."""
    if batch.num_rows:
        name = f"attempt-{attempt:04d}-{uuid.uuid4().hex}.parquet"
        tmp = Path(scored_dir) / f".{name}.tmp"
        pq.write_table(batch.cast(SCORED), tmp)
        os.replace(tmp, Path(scored_dir) / name)
    return pa.table({"rows": [batch.num_rows]})


def committed_files(scored_dir: Path) -> list[Path]:
    """The committed batch files of `scored_dir`, in name order (temporary and stray files left out)."""
    if not scored_dir.is_dir():
        return []
    return sorted(p for p in scored_dir.iterdir() if _PART.match(p.name))


def attempt_of(path: str | Path) -> int:
    m = _PART.match(Path(path).name)
    if m is None:
        raise ValueError(f"unexpected file in the scored directory: {path}")
    return int(m.group(1))


TAGS = [("attempt", pa.int32()), ("file", pa.string())]
TAGGED = pa.schema([*SCORED, *TAGS])
"""A committed sample with the attempt that wrote it and its file; a prompt of the stage's input has no model."""


def as_tagged(batch: pa.Table) -> pa.Table:
    """Ray Data map: a batch read from committed files with `include_paths=True` (any subset of `SCORED`'s
    columns), or a batch of prompts, as `TAGGED` rows; missing columns are null."""
    n = batch.num_rows
    if "path" in batch.column_names:
        paths = batch["path"].to_pylist()
        batch = batch.drop_columns(["path"])
        batch = batch.append_column("attempt", pa.array([attempt_of(p) for p in paths], pa.int32()))
        batch = batch.append_column("file", pa.array([Path(p).name for p in paths], pa.string()))
    columns = [batch[f.name].cast(f.type) if f.name in batch.column_names else pa.nulls(n, f.type)
               for f in TAGGED]
    return pa.Table.from_arrays(columns, schema=TAGGED)


def read_committed(scored_dir: Path, columns: list[str] | None = None) -> Any:
    """The committed samples of `scored_dir` (`columns` of them, keys always included) as a `TAGGED` Ray
    Dataset, or None when nothing is committed yet."""
    import ray

    files = committed_files(scored_dir)
    if not files:
        return None
    ds = ray.data.read_parquet([str(f) for f in files], include_paths=True)
    if columns is not None:
        ds = ds.select_columns(list(dict.fromkeys(["prompt_id", "model", "sample_idx", "error", *columns, "path"])))
    return ds.map_batches(as_tagged, batch_format="pyarrow")


def complete_attempts(rows: list[dict[str, Any]], samples_per_model: dict[str, int]) -> dict[str, int | None]:
    """For the committed rows of one prompt: per model, the newest attempt that holds the whole pair (every
    sample index `0..n-1`, or its error row), or None when no attempt does."""
    seen: dict[str, dict[int, set[int]]] = {}
    errored: dict[str, set[int]] = {}
    for r in rows:
        seen.setdefault(r["model"], {}).setdefault(r["attempt"], set()).add(r["sample_idx"])
        if r["error"] is not None:
            errored.setdefault(r["model"], set()).add(r["attempt"])
    out: dict[str, int | None] = {}
    for model, by_attempt in seen.items():
        want = set(range(samples_per_model.get(model, 0)))
        done = [a for a, idx in by_attempt.items() if want <= idx or a in errored.get(model, set())]
        out[model] = max(done) if done else None
    return out


def rows_to_keep(rows: list[dict[str, Any]], chosen: dict[str, int | None]) -> list[dict[str, Any]]:
    """The rows of each pair's chosen attempt, one per sample index: a batch whose commit task was retried
    after its file was written is in `scored/` twice, and the first file (by name) is kept."""
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["file"]):
        if chosen.get(r["model"]) == r["attempt"]:
            kept.setdefault((r["model"], r["sample_idx"]), r)
    return list(kept.values())

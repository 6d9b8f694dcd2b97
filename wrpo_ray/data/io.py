"""Persisting stage outputs as Parquet under the run's output directory.

Each output is a directory replaced atomically: written to a temporary sibling and swapped in, so
re-running a stage into the same output directory replaces its rows instead of duplicating them, and an
interrupted write never leaves a half-written stage behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write a directory with `write(tmp)` into a temporary sibling and swap it in for `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        _swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_table(table: pa.Table, final: str | Path, *, sort_by: list[str] | None = None,
                rows_per_shard: int = 100_000) -> Path:
    """Write an in-memory table as `part-00000.parquet`, ... sorted by `sort_by` (deterministic shards)."""
    if sort_by and table.num_rows:
        table = table.sort_by([(k, "ascending") for k in sort_by])

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        n_shards = max(1, -(-table.num_rows // rows_per_shard))
        for i in range(n_shards):
            pq.write_table(table.slice(i * rows_per_shard, rows_per_shard), tmp / f"part-{i:05d}.parquet")

    return atomic_dir(Path(final), write)


def write_dataset(ds: Any, final: str | Path, schema: pa.Schema | None = None) -> Path:
    """Write a Ray Dataset with Ray Data's Parquet writer as `part-<task>-*.parquet`, swapped in atomically.

    Ray Data writes nothing for an empty dataset; then one empty file with `schema` keeps the folder readable.
    """
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:05d}"

    def write(tmp: Path) -> None:
        ds.write_parquet(str(tmp), filename_provider=ShardNames(), mode="overwrite")
        if not tmp.is_dir() or not any(tmp.glob("*.parquet")):
            if schema is None:
                raise ValueError(f"nothing to write to {final} and no schema for an empty table")
            tmp.mkdir(parents=True, exist_ok=True)
            pq.write_table(schema.empty_table(), tmp / "part-00000.parquet")

    return atomic_dir(Path(final), write)


def fingerprint(obj: Any) -> str:
    """A short digest of a JSON-serialisable value (keys sorted): what decides whether saved work is reused."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def read_table(path: str | Path) -> pa.Table:
    return pq.read_table(str(path))


def column_total(ds: Any, column: str) -> int:
    """The sum of an integer column of a Ray Dataset, added up in the caller as the blocks stream out.

    `Dataset.sum` runs a hash aggregate (a shuffle map and reduce: about 3 s on 2 CPUs for a handful of rows);
    a per-block sum in the caller costs a few numbers per block.
    """
    import pyarrow.compute as pc

    return sum(int(pc.sum(b[column]).as_py() or 0)
               for b in ds.iter_batches(batch_format="pyarrow", batch_size=None) if b.num_rows)

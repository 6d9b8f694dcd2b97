"""Prompt files as a Ray Data source: JSONL, Parquet and `datasets` directories, on any filesystem Ray Data reads.

Each file is read by a Ray Data task as a stream of blocks `(source, row_index, raw)`, one row per input
row, so nothing is parsed or held by the driver. Lines are not parsed here: a line that is not JSON reaches
validation like any other and becomes a quarantine row there, instead of failing the read. Parquet rows and
`datasets` rows are written out as JSON text, so every format is validated by the same code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from wrpo_ray.data.groups import group_partitions, map_key_groups
from wrpo_ray.data.prompts import CHECKED, InputError, check_batch, first_of_each_id
from wrpo_ray.data.schemas import PROMPTS, QUARANTINE

RAW_ROWS = pa.schema([
    ("source", pa.string()),
    ("row_index", pa.int64()),
    ("raw", pa.string()),
])

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
ROWS_PER_BLOCK = 8192


def _block(source: str, rows: list[tuple[int, str]]) -> pa.Table:
    return pa.table({
        "source": pa.array([source] * len(rows), pa.string()),
        "row_index": pa.array([r[0] for r in rows], pa.int64()),
        "raw": pa.array([r[1] for r in rows], pa.string()),
    }, schema=RAW_ROWS)


def read_blocks(f: Any, path: str) -> Iterator[pa.Table]:
    """The `RAW_ROWS` blocks of one open input file (random access for Parquet, a stream otherwise)."""
    if path.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        yield from _table_blocks(pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_BLOCK), path)
    elif path.endswith(ARROW_SUFFIXES):
        yield from _table_blocks(pa.ipc.open_stream(f), path)
    else:
        yield from _line_blocks(f, path)


def _table_blocks(batches: Any, path: str) -> Iterator[pa.Table]:
    index = 0
    for batch in batches:
        rows = [(index + i, json.dumps(r, default=str, ensure_ascii=False)) for i, r in enumerate(batch.to_pylist())]
        if rows:
            yield _block(path, rows)
        index += batch.num_rows


def _line_blocks(f: Any, path: str) -> Iterator[pa.Table]:
    """Blank lines are skipped but counted, so `row_index` is the line number (from 0)."""
    rows: list[tuple[int, str]] = []
    pending = b""
    index = 0
    while True:
        chunk = f.read(1 << 20)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop() if chunk else b""
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip("\r")
            if text.strip():
                rows.append((index, text))
            index += 1
            if len(rows) >= ROWS_PER_BLOCK:
                yield _block(path, rows)
                rows = []
        if not chunk:
            break
    if rows:
        yield _block(path, rows)


def open_input(path: str) -> Any:
    """An input file opened as `read_blocks` wants it, outside Ray Data."""
    fs, p = _filesystem(path)
    return fs.open_input_file(p) if path.endswith(PARQUET_SUFFIXES) else fs.open_input_stream(p)


class PromptFileDatasource(FileBasedDatasource):
    """One read task per file; blocks of `ROWS_PER_BLOCK` rows with their position in the file."""

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        if path.endswith(PARQUET_SUFFIXES):
            return filesystem.open_input_file(path)  # Parquet's footer needs random access
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        yield from read_blocks(f, path)


def _suffix_ok(path: str) -> bool:
    return path.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES + ARROW_SUFFIXES)


def input_files(path: str, split: str = "train") -> list[str]:
    """The files of a prompt input: a file, a directory of JSONL/Parquet files, or a `datasets` directory
    (`save_to_disk` of one Dataset, or of a DatasetDict and its split `split`). Local paths and URIs."""
    from pyarrow.fs import FileSelector, FileType

    fs, root = _filesystem(path)
    info = fs.get_file_info(root)
    if info.type == FileType.NotFound:
        raise InputError(f"prompt input {path} does not exist")
    scheme = path.split("://", 1)[0] + "://" if "://" in path else ""

    def uri(p: str) -> str:
        return scheme + p if scheme else p

    if info.type == FileType.File:
        if not _suffix_ok(root):
            raise InputError(f"{path}: unsupported prompt input (use .jsonl, .parquet or a datasets directory)")
        return [uri(root)]
    names = {i.base_name: i for i in fs.get_file_info(FileSelector(root))}
    if "dataset_dict.json" in names:
        splits = json.loads(_read_text(fs, f"{root}/dataset_dict.json"))["splits"]
        if split not in splits:
            raise InputError(f"{path}: a DatasetDict without a split {split!r}; available splits: {sorted(splits)}")
        root = f"{root}/{split}"
        names = {i.base_name: i for i in fs.get_file_info(FileSelector(root))}
    if "state.json" in names:
        files = [f["filename"] for f in json.loads(_read_text(fs, f"{root}/state.json"))["_data_files"]]
        return [uri(f"{root}/{name}") for name in files]
    files = sorted(i.path for i in fs.get_file_info(FileSelector(root, recursive=True))
                   if i.type == FileType.File and _suffix_ok(i.path) and not i.base_name.startswith((".", "_")))
    if not files:
        raise InputError(f"{path}: no .jsonl, .json or .parquet files in this directory")
    return [uri(p) for p in files]


def input_identity(files: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every input file: what decides whether saved work for this input is reused."""
    out = []
    for path in files:
        fs, p = _filesystem(path)
        info = fs.get_file_info(p)
        out.append((path, int(info.size or 0), int(info.mtime_ns or 0)))
    return out


def _filesystem(path: str) -> tuple[Any, str]:
    """The pyarrow filesystem of a URI or a local path, and the path within it."""
    import os

    from pyarrow.fs import FileSystem

    return FileSystem.from_uri(path if "://" in path else "file://" + os.path.abspath(path))


def _read_text(fs: Any, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def read_raw_rows(files: list[str]) -> Any:
    """A Ray Dataset of every row of these input files, unparsed (see `RAW_ROWS`)."""
    import ray

    return ray.data.read_datasource(PromptFileDatasource(files), override_num_blocks=len(files))


@dataclass
class CheckedPrompts:
    """A validated prompt input, held by Ray Data (materialized in the object store, not in the driver)."""

    files: list[str]
    valid: Any
    """`PROMPTS` rows."""
    quarantine: Any
    """`QUARANTINE` rows of stage `input`."""
    rows_in: int
    rows_valid: int

    @property
    def rows_quarantined(self) -> int:
        return self.rows_in - self.rows_valid


def _where(batch: pa.Table, column: str, present: bool) -> pa.Table:
    import pyarrow.compute as pc

    mask = pc.is_valid(batch[column])
    return batch.filter(mask if present else pc.invert(mask))


def _as_quarantine(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return pa.table({
        "stage": pa.array(["input"] * n, pa.string()), "source": batch["source"], "row_index": batch["row_index"],
        "prompt_id": batch["prompt_id"], "model": pa.nulls(n, pa.string()), "sample_idx": pa.nulls(n, pa.int32()),
        "reason": batch["reason"], "raw": batch["raw"],
    }, schema=QUARANTINE)


def read_prompts(path: str, *, max_prompt_chars: int, strict: bool = False, split: str = "train") -> CheckedPrompts:
    """Read and validate a prompt input with Ray Data: per-row checks in a map, repeated prompt_ids in a
    per-id grouping (a rejected row is a group of its own); with `strict`, any bad row raises `InputError`
    listing the first few.

    A prompt given as one message (`{"role": "user", "content": ...}`, as in the paper's released data) is a
    one-turn chat; `split` picks the split of a saved DatasetDict.
    """
    files = input_files(path, split)
    checked = read_raw_rows(files).map_batches(
        check_batch, fn_kwargs={"max_prompt_chars": max_prompt_chars}, batch_format="pyarrow").materialize()
    rows_in = checked.count()
    if rows_in:
        checked = map_key_groups(checked, "group_key", first_of_each_id, CHECKED,
                                 num_partitions=group_partitions(rows_in)).materialize()
    valid = checked.map_batches(_where, fn_kwargs={"column": "reason", "present": False},
                                batch_format="pyarrow").select_columns(PROMPTS.names).materialize()
    quarantine = checked.map_batches(_where, fn_kwargs={"column": "reason", "present": True},
                                     batch_format="pyarrow").map_batches(_as_quarantine, batch_format="pyarrow"
                                                                         ).materialize()
    rows_valid = valid.count()
    if strict and rows_valid < rows_in:
        head = "; ".join(f"row {q['row_index']}: {q['reason']}" for q in quarantine.take(5))
        raise InputError(f"{rows_in - rows_valid} bad prompt rows in {path} (strict mode): {head}")
    return CheckedPrompts(files=files, valid=valid, quarantine=quarantine, rows_in=rows_in, rows_valid=rows_valid)

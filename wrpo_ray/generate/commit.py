"""Committed batches of scored samples: what makes an interrupted generation stage resumable.

The last step of the generation plan writes every scored batch as its own Parquet file in `scored/`,
to a hidden temporary name first and then renamed, so a file is either whole or absent. A re-run of the
stage reads which (prompt, model) pairs are complete there and sends only the others to the vLLM pools;
on a spot cluster that loses a node mid-stage, the work already scored is kept.

A pair is complete when one attempt holds every sample index `0..n-1` of it, or its error row (a prompt
too long for that model, quarantined). Ray Data may split a pair's samples across two batches, so an
attempt can leave a pair half-written; such a pair is generated again whole and only the newest complete
attempt of each pair is read back, so no sample is ever counted twice.

`scored/_run.json` records a fingerprint of the stage's settings and prompts; when it differs, `scored/`
is cleared, so a changed config never mixes old samples with new ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
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


@dataclass
class CommittedState:
    """What `scored/` holds: the complete pairs (with the attempt to read back) and the rows to leave out
    (`overrides`: pairs written by more than one attempt, or never completed)."""

    files: list[Path] = field(default_factory=list)
    complete: dict[tuple[str, str], int] = field(default_factory=dict)
    incomplete: set[tuple[str, str]] = field(default_factory=set)
    overrides: dict[tuple[str, str], int | None] = field(default_factory=dict)

    def pending(self, prompts: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
        """The prompt rows whose (prompt, `model`) pair no attempt completed."""
        return [r for r in prompts if (r["prompt_id"], model) not in self.complete]


def _attempt_of(path: Path) -> int:
    m = _PART.match(path.name)
    if m is None:
        raise ValueError(f"unexpected file in the scored directory: {path}")
    return int(m.group(1))


def scan(scored_dir: Path, samples_per_model: dict[str, int]) -> CommittedState:
    """Read the key columns of every committed file and decide which pairs are complete."""
    state = CommittedState()
    if not scored_dir.is_dir():
        return state
    state.files = sorted(p for p in scored_dir.iterdir() if _PART.match(p.name))
    seen: dict[tuple[str, str], dict[int, set[int]]] = {}
    errored: dict[tuple[str, str], set[int]] = {}
    for path in state.files:
        attempt = _attempt_of(path)
        keys = pq.read_table(path, columns=["prompt_id", "model", "sample_idx", "error"])
        has_error = pc.invert(pc.is_null(keys["error"])).to_pylist()
        for pid, model, idx, err in zip(keys["prompt_id"].to_pylist(), keys["model"].to_pylist(),
                                        keys["sample_idx"].to_pylist(), has_error, strict=True):
            pair = (pid, model)
            if err:
                errored.setdefault(pair, set()).add(attempt)
            seen.setdefault(pair, {}).setdefault(attempt, set()).add(idx)
    for pair, by_attempt in seen.items():
        want = set(range(samples_per_model.get(pair[1], 0)))
        done = [a for a, idx in by_attempt.items() if idx == want or a in errored.get(pair, set())]
        if done:
            state.complete[pair] = max(done)
            if len(by_attempt) > 1:
                state.overrides[pair] = max(done)
        else:
            state.incomplete.add(pair)
            state.overrides[pair] = None
    return state


def keep_rows(batch: pa.Table, overrides: dict[tuple[str, str], int | None]) -> pa.Table:
    """Ray Data filter (reading with `include_paths=True`): for a pair in `overrides`, only the rows of
    the attempt it names (none for `None`); every other row is kept."""
    attempts = [_attempt_of(Path(p)) for p in batch["path"].to_pylist()]
    mask = []
    for pid, model, a in zip(batch["prompt_id"].to_pylist(), batch["model"].to_pylist(), attempts, strict=True):
        pair = (pid, model)
        mask.append(pair not in overrides or overrides[pair] == a)
    return batch.filter(pa.array(mask, pa.bool_())).drop_columns(["path"])

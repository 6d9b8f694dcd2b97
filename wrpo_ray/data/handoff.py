"""Data passed between the pipeline's stages, built with Ray Data so the driver never holds the selections:
the target-sampling prompts (the selections outside the SFT split) and the preference quadruples (y_ws of the
sources joined with y_wt / y_l of the target by prompt_id)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.datasource import BlockBasedFileDatasink

from wrpo_ray.data.groups import group_partitions, map_key_groups, rows_where
from wrpo_ray.data.io import atomic_dir, column_total
from wrpo_ray.data.schemas import PREFERENCE, QUARANTINE, SELECTIONS
from wrpo_ray.train.preference_data import in_sft_split


class JsonLinesDatasink(BlockBasedFileDatasink):
    """Writes a dataset's `line` column (JSON text) as `.jsonl` files, one line per row."""

    def __init__(self, path: str) -> None:
        super().__init__(path, file_format="jsonl")

    def write_block_to_file(self, block: Any, file: Any) -> None:
        for line in block.to_arrow()["line"].to_pylist():
            file.write(line.encode() + b"\n")


def target_prompt_lines(batch: pa.Table, seed: int, fraction: float) -> pa.Table:
    lines = []
    for pid, messages, metadata in zip(batch["prompt_id"].to_pylist(), batch["messages"].to_pylist(),
                                       batch["metadata"].to_pylist(), strict=True):
        if not in_sft_split(pid, seed, fraction):
            lines.append(json.dumps({**json.loads(metadata or "{}"), "prompt_id": pid, "messages": messages},
                                    ensure_ascii=False))
    return pa.table({"line": pa.array(lines, pa.string())})


def write_target_prompts(selections: Path, out: Path, seed: int, fraction: float) -> dict[str, int]:
    """The prompts outside the SFT split, with their metadata fields, as a directory of JSONL files for target
    sampling (one empty file when there are none, so the input still exists)."""
    import ray

    from wrpo_ray.runtime import ensure_ray

    ensure_ray()  # first in a resumed run: Ray Data would otherwise start Ray itself, without our settings

    lines = ray.data.read_parquet(str(selections)).select_columns(["prompt_id", "messages", "metadata"]).map_batches(
        target_prompt_lines, fn_kwargs={"seed": seed, "fraction": fraction}, batch_format="pyarrow").materialize()

    def write(tmp: Path) -> None:
        lines.write_datasink(JsonLinesDatasink(str(tmp)))
        tmp.mkdir(parents=True, exist_ok=True)
        if not any(tmp.glob("*.jsonl")):
            (tmp / "empty.jsonl").write_text("")

    atomic_dir(out, write)
    return {"prompts": lines.count()}


SIDED = pa.schema([("side", pa.string()), *SELECTIONS])
QUADRUPLE_OR_ASIDE = pa.unify_schemas([pa.schema([("kind", pa.string())]), PREFERENCE, QUARANTINE])


def _sided(batch: pa.Table, side: str) -> pa.Table:
    batch = batch.select(SELECTIONS.names).cast(SELECTIONS)
    return batch.add_column(0, "side", pa.array([side] * batch.num_rows, pa.string()))


def quadruple_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One prompt's source selection and target selection (`SIDED` rows): its quadruple, or a quarantine row
    when the target has fewer than two selectable samples or all of them tie. A prompt with one side only (an
    SFT prompt, or one no source answered) yields nothing: it is not a preference example."""
    sides = {r["side"]: r for r in rows}
    s, t = sides.get("sources"), sides.get("target")
    if s is None or t is None:
        return []
    if t["num_candidates"] < 2:
        out = {"kind": "quarantine", "stage": "preference", "prompt_id": t["prompt_id"],
               "reason": f"too_few_target_samples: {t['num_candidates']} selectable (the rest failed or stopped at "
                         "max_tokens)"}
    elif t["reward_ws"] == t["reward_worst"]:
        out = {"kind": "quarantine", "stage": "preference", "prompt_id": t["prompt_id"],
               "reason": f"target_samples_tied: every target sample scored {t['reward_ws']:.4g}"}
    else:
        out = {"kind": "quadruple", "prompt_id": t["prompt_id"], "prompt": s["prompt"], "messages": s["messages"],
               "y_ws": s["y_ws"], "y_wt": t["y_ws"], "y_l": t["y_worst"], "reward_ws": s["reward_ws"],
               "reward_wt": t["reward_ws"], "reward_l": t["reward_worst"], "source_model": s["source_model"],
               "metadata": s["metadata"]}
    return [out]


def _ws_above_wt(batch: pa.Table) -> pa.Table:
    return pa.table({"n": [int(pc.sum(pc.greater(batch["reward_ws"], batch["reward_wt"])).as_py() or 0)]})


def build_quadruples(sources: Path, target: Path, out: Path) -> dict[str, Any]:
    """Join y_ws (sources) with y_wt / y_l (target samples) by prompt_id: `out/data` (sorted by prompt_id, the
    order training draws from) and `out/quarantine`."""
    import ray

    from wrpo_ray.data.io import write_dataset
    from wrpo_ray.runtime import ensure_ray

    ensure_ray()

    src = ray.data.read_parquet(str(sources)).map_batches(_sided, fn_kwargs={"side": "sources"},
                                                         batch_format="pyarrow")
    tgt = ray.data.read_parquet(str(target)).map_batches(_sided, fn_kwargs={"side": "target"},
                                                        batch_format="pyarrow")
    target_rows = tgt.count()
    joined = map_key_groups(src.union(tgt), "prompt_id", quadruple_of, QUADRUPLE_OR_ASIDE,
                            num_partitions=group_partitions(target_rows)).materialize()
    quads = joined.map_batches(rows_where, fn_kwargs={"column": "kind", "value": "quadruple", "schema": PREFERENCE},
                               batch_format="pyarrow").materialize()
    aside = joined.map_batches(rows_where, fn_kwargs={"column": "kind", "value": "quarantine", "schema": QUARANTINE},
                               batch_format="pyarrow")
    n = quads.count()
    write_dataset(quads.sort("prompt_id") if n else quads, out / "data", schema=PREFERENCE)
    write_dataset(aside, out / "quarantine", schema=QUARANTINE)
    return {"quadruples": n, "quarantined": aside.count(), "target_rows": target_rows,
            "y_ws_above_y_wt": column_total(quads.map_batches(_ws_above_wt, batch_format="pyarrow"), "n")
            if n else 0}

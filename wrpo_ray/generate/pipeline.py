"""The generation stage as one Ray Data plan: prompts -> one vLLM pool per source -> reward -> y_ws.

Pools of different source models run concurrently (their branches are unioned into one streaming plan),
as far as the cluster's resources allow.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from wrpo_ray.config import GenerateConfig, resolve_model_path
from wrpo_ray.data.io import fingerprint, write_dataset, write_json, write_table
from wrpo_ray.data.prompts import InputError, read_prompts
from wrpo_ray.data.schemas import PROMPTS, QUARANTINE, SCORED, SELECTIONS
from wrpo_ray.generate.commit import CommittedState, commit_batch, keep_rows, scan, start_attempt
from wrpo_ray.generate.engines import VLLMGenerator
from wrpo_ray.generate.reward import RewardModelScorer, VerifierScorer
from wrpo_ray.generate.select import rank, win_shares
from wrpo_ray.runtime import ensure_ray

log = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    output_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def source_samples(prompts: dict[str, Any], cfg: GenerateConfig) -> Any:
    """One vLLM actor pool per source model over its prompts (by source name), unioned into one dataset."""
    branches = []
    for i, src in enumerate(cfg.sources):
        if src.name not in prompts:
            continue
        pool = src.pool
        branches.append(
            prompts[src.name].map_batches(
                VLLMGenerator,
                fn_constructor_kwargs={
                    "model": src.model_dump(),
                    "local_path": resolve_model_path(src.path),
                    "seed": cfg.seed + i,
                },
                batch_format="pyarrow",
                batch_size=pool.batch_size,
                compute=pool.compute(),
                num_cpus=pool.num_cpus,
                num_gpus=pool.num_gpus,
                resources=pool.resources or None,
            )
        )
    return branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]


def score(samples: Any, cfg: GenerateConfig) -> Any:
    """Add a `reward` column with the reward model's actor pool or the Python verifier."""
    import ray

    reward = cfg.reward
    if reward.verifier is not None:
        return samples.map_batches(VerifierScorer, fn_constructor_kwargs={"spec": reward.verifier},
                                   batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25)
    rm = reward.model
    return samples.map_batches(
        RewardModelScorer,
        fn_constructor_kwargs={"model": rm.model_dump(), "local_path": resolve_model_path(rm.path),
                               "max_length": reward.max_length},
        batch_format="pyarrow",
        batch_size=rm.pool.batch_size,
        compute=rm.pool.compute(),
        num_cpus=rm.pool.num_cpus,
        num_gpus=rm.pool.num_gpus,
        resources=rm.pool.resources or None,
    )


def select_group(group: pa.Table, keep_truncated: bool = False) -> pa.Table:
    """`map_groups` function: the y_ws row of one prompt's scored samples.

    Samples that stopped at `max_tokens` (finish_reason "length") are not candidates unless `keep_truncated`.
    """
    samples = group.select(["model", "sample_idx", "reward", "response", "num_tokens", "finish_reason"]).to_pylist()
    if not keep_truncated:
        samples = [s for s in samples if not is_truncated(s)]
    ranked = rank(samples)
    if not ranked:
        return pa.Table.from_pylist([], schema=SELECTIONS)
    best, worst = ranked[0], ranked[-1]
    by_model: dict[str, list[float]] = {}
    for s in ranked:
        by_model.setdefault(s["model"], []).append(round(float(s["reward"]), 6))
    head = group.slice(0, 1).to_pylist()[0]
    return pa.Table.from_pylist([{
        "prompt_id": head["prompt_id"], "prompt": head["prompt"], "messages": head["messages"],
        "metadata": head["metadata"], "y_ws": best["response"], "reward_ws": float(best["reward"]),
        "source_model": best["model"], "source_sample_idx": best["sample_idx"],
        "num_tokens_ws": best["num_tokens"], "num_candidates": len(ranked),
        "rewards_by_model": json.dumps(by_model, sort_keys=True),
        "y_worst": worst["response"], "reward_worst": float(worst["reward"]), "worst_model": worst["model"],
    }], schema=SELECTIONS)


CUT_AT_MAX_TOKENS = "length"
"""vLLM's `finish_reason` of a sample that stopped at `max_tokens`."""


def is_truncated(sample: dict[str, Any]) -> bool:
    return sample.get("finish_reason") == CUT_AT_MAX_TOKENS


def _split_errors(batch: pa.Table, keep_errors: bool) -> pa.Table:
    mask = pc.is_null(batch["error"])
    return batch.filter(pc.invert(mask) if keep_errors else mask)


def _quarantine_rows(rows: list[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    return [{
        "stage": stage, "source": r.get("source"), "row_index": r.get("row_index"),
        "prompt_id": r.get("prompt_id"), "model": r.get("model"), "sample_idx": r.get("sample_idx"),
        "reason": r["reason"], "raw": r.get("raw"),
    } for r in rows]


def run_generate(cfg: GenerateConfig) -> GenerateResult:
    """Run the generation stage and persist `samples/`, `selections/`, `quarantine/` and `summary.json`."""
    import ray

    out = Path(cfg.output_dir)
    batch = read_prompts(cfg.data.prompts, max_prompt_chars=cfg.data.max_prompt_chars, strict=cfg.data.strict,
                         split=cfg.data.split)
    quarantine = _quarantine_rows(batch.quarantined, "input")
    log.info("prompts: %d in, %d valid, %d quarantined", batch.rows_in, len(batch.valid), len(quarantine))
    if not batch.valid:
        write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE), out / "quarantine")
        raise InputError(f"no valid prompts in {cfg.data.prompts}; see {out / 'quarantine'}")

    ensure_ray()
    scored_dir = out / "scored"
    # selection settings do not change what was generated: a new one re-selects without regenerating
    generation = cfg.model_dump(exclude={"output_dir", "keep_truncated"})
    attempt = start_attempt(scored_dir, fingerprint([generation, batch.valid]))
    n_per_model = {s.name: s.sampling.n for s in cfg.sources}
    before = scan(scored_dir, n_per_model)
    pending = {s.name: before.pending(batch.valid, s.name) for s in cfg.sources}
    prompts = {name: ray.data.from_arrow(pa.Table.from_pylist(rows, schema=PROMPTS))
               for name, rows in pending.items() if rows}
    pairs_pending = sum(len(rows) for rows in pending.values())
    log.info("generate: attempt %d, %d (prompt, model) pairs already scored, %d to generate",
             attempt, len(before.complete), pairs_pending)
    t0 = time.perf_counter()
    if prompts:
        committed = score(source_samples(prompts, cfg), cfg).map_batches(
            commit_batch, fn_kwargs={"scored_dir": str(scored_dir), "attempt": attempt},
            batch_format="pyarrow", batch_size=None, num_cpus=0.1,
        ).sum("rows")
        log.info("generate: %d scored samples committed in attempt %d", committed or 0, attempt)
    gen_seconds = time.perf_counter() - t0
    state = scan(scored_dir, n_per_model)
    scored = _read_scored(state).materialize()

    good = scored.map_batches(_split_errors, fn_kwargs={"keep_errors": False}, batch_format="pyarrow")
    bad = scored.map_batches(_split_errors, fn_kwargs={"keep_errors": True}, batch_format="pyarrow")
    bad_rows = bad.select_columns(["prompt_id", "model", "sample_idx", "error", "response"]).take_all()
    quarantine += _quarantine_rows(
        [{**r, "reason": r["error"], "raw": (r["response"] or "")[:2000]} for r in bad_rows], "generate"
    )
    quarantine += _quarantine_rows([
        {"prompt_id": pid, "model": model, "reason": "incomplete_samples: no attempt wrote all of this pair's samples"}
        for pid, model in sorted(state.incomplete)
    ], "generate")
    write_dataset(good, out / "samples", schema=SCORED)

    selections = good.groupby("prompt_id", num_partitions=_partitions(good.count())).map_groups(
        select_group, fn_kwargs={"keep_truncated": cfg.keep_truncated}, batch_format="pyarrow").materialize()
    write_dataset(selections, out / "selections", schema=SELECTIONS)

    stats = _frame(good, ["prompt_id", "model", "sample_idx", "num_tokens", "finish_reason"])
    truncated = stats[stats["finish_reason"] == CUT_AT_MAX_TOKENS]
    if not cfg.keep_truncated:
        quarantine += _quarantine_rows([
            {"prompt_id": r.prompt_id, "model": r.model, "sample_idx": int(r.sample_idx),
             "reason": f"truncated_sample: stopped at max_tokens ({int(r.num_tokens)} tokens), not selectable"}
            for r in truncated.itertuples()], "select")
    winners = _frame(selections, ["prompt_id", "source_model"])
    selected_ids = set(winners["prompt_id"])
    for row in batch.valid:
        if row["prompt_id"] not in selected_ids:
            quarantine.append(_quarantine_rows([{
                "prompt_id": row["prompt_id"], "reason": "no_selectable_samples: every sample failed"
                + ("" if cfg.keep_truncated else " or was truncated"),
            }], "select")[0])
    write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE), out / "quarantine",
                sort_by=["stage", "prompt_id"])

    names = [s.name for s in cfg.sources]
    all_tokens = int(stats["num_tokens"].sum())
    summary = {
        "stage": "generate",
        "prompts": {"in": batch.rows_in, "valid": len(batch.valid), "out": len(selected_ids),
                    "quarantined": batch.rows_in - len(batch.valid) + (len(batch.valid) - len(selected_ids))},
        "samples": {
            "expected": len(batch.valid) * sum(s.sampling.n for s in cfg.sources),
            "out": len(stats), "quarantined": len(bad_rows), "truncated": len(truncated),
            "truncated_selectable": cfg.keep_truncated,
            "per_source": {m: int((stats["model"] == m).sum()) for m in names},
        },
        "tokens": {"generated": all_tokens, "seconds": round(gen_seconds, 2),
                   # after a resume the tokens include reused samples, so a rate would mislead
                   "tokens_per_s": round(all_tokens / gen_seconds, 1) if gen_seconds and not before.complete
                   else None},
        "win_shares": win_shares(winners["source_model"].tolist(), names),
        "resume": {"attempt": attempt, "pairs_reused": len(before.complete), "pairs_generated": pairs_pending,
                   "pairs_incomplete": len(state.incomplete)},
        "quarantine_reasons": _reason_counts(quarantine),
        "output_dir": str(out),
    }
    write_json(summary, out / "summary.json")
    return GenerateResult(output_dir=out, summary=summary)


def _frame(ds: Any, columns: list[str]) -> Any:
    """These columns as a pandas frame; an empty dataset (every sample failed or was cut) has no schema."""
    import pandas as pd

    frame = ds.select_columns(columns).to_pandas() if ds.count() else None
    return frame if frame is not None and set(columns) <= set(frame.columns) else pd.DataFrame(columns=columns)


def _partitions(rows: int, rows_per_partition: int = 50_000) -> int:
    """Shuffle partitions for the per-prompt grouping: Ray Data's default of 200 costs a small run 15 s."""
    return max(1, min(200, -(-rows // rows_per_partition)))


def _read_scored(state: CommittedState) -> Any:
    """The committed samples as one dataset, each (prompt, model) pair from one complete attempt."""
    import ray

    if not state.files:
        return ray.data.from_arrow(pa.Table.from_pylist([], schema=SCORED))
    paths = [str(p) for p in state.files]
    if not state.overrides:
        return ray.data.read_parquet(paths, schema=SCORED)
    return ray.data.read_parquet(paths, include_paths=True).map_batches(
        keep_rows, fn_kwargs={"overrides": state.overrides}, batch_format="pyarrow")


def _reason_counts(quarantine: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in quarantine:
        key = f"{q['stage']}:{q['reason'].split(':', 1)[0]}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-stage report: counts in/out/aside, samples per source, throughput, win shares."""
    p, s, t = summary["prompts"], summary["samples"], summary["tokens"]
    r = summary.get("resume", {"pairs_reused": 0})
    lines = [
        f"prompts   in {p['in']}  valid {p['valid']}  out {p['out']}  quarantined {p['quarantined']}",
        f"samples   expected {s['expected']}  out {s['out']}  quarantined {s['quarantined']}  "
        f"truncated {s.get('truncated', 0)} ({'selectable' if s.get('truncated_selectable') else 'not selectable'})",
        f"tokens    {t['generated']} generated in {t['seconds']} s ({t['tokens_per_s']} tokens/s, "
        "generation + scoring)" if t["tokens_per_s"] is not None else
        f"tokens    {t['generated']} in all; this attempt took {t['seconds']} s",
        "resumed   {pairs_reused} (prompt, model) pairs reused, {pairs_generated} generated".format(**r)
        if r["pairs_reused"] else "resumed   no (fresh start)",
        "",
        f"{'source model':<24}{'samples':>10}{'win share':>12}",
    ]
    for m, share in summary["win_shares"].items():
        lines.append(f"{m:<24}{s['per_source'].get(m, 0):>10}{share * 100:>11.1f}%")
    if summary["quarantine_reasons"]:
        lines += ["", "quarantine reasons:"]
        lines += [f"  {k}: {v}" for k, v in summary["quarantine_reasons"].items()]
    lines.append(f"\noutputs in {summary['output_dir']}")
    return "\n".join(lines)

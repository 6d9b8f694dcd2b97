"""The generation stage as Ray Data plans: prompt files -> validation -> one vLLM pool per source -> reward ->
committed batches -> per-prompt resolution (y_ws, quarantine) -> outputs.

Pools of different source models run concurrently (their branches are unioned into one streaming plan),
as far as the cluster's resources allow.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from wrpo_ray.config import GenerateConfig, resolve_model_path
from wrpo_ray.data.groups import group_partitions, map_key_groups, rows_where
from wrpo_ray.data.io import column_total, fingerprint, write_dataset, write_json
from wrpo_ray.data.prompt_source import CheckedPrompts, input_identity, read_prompts
from wrpo_ray.data.prompts import InputError
from wrpo_ray.data.schemas import PROMPTS, QUARANTINE, SCORED, SELECTIONS
from wrpo_ray.generate.commit import as_tagged, commit_batch, read_committed, start_attempt
from wrpo_ray.generate.engine_starts import engine_starts
from wrpo_ray.generate.engines import VLLMGenerator
from wrpo_ray.generate.resolve import (
    PENDING,
    QUARANTINED,
    RESOLVED,
    SAMPLE,
    SELECTION,
    pending_pairs,
    resolve_prompt,
)
from wrpo_ray.generate.retries import count_retries
from wrpo_ray.generate.reward import RewardModelScorer, VerifierScorer
from wrpo_ray.generate.select import CUT_AT_MAX_TOKENS
from wrpo_ray.generate.waves import plan_waves
from wrpo_ray.runtime import ensure_ray

log = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    output_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def source_samples(prompts: dict[str, Any], cfg: GenerateConfig) -> Any:
    """One vLLM actor pool per source model over its prompts (a dataset per source name), unioned into one."""
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


def pending_by_source(prompts: CheckedPrompts, scored_dir: Path, samples_per_model: dict[str, int]
                      ) -> tuple[dict[str, Any], int]:
    """Per source, the prompts whose pair no attempt completed (all of them on a fresh start), and their count."""
    committed = read_committed(scored_dir, columns=[])
    if committed is None:
        return {name: prompts.valid for name in samples_per_model}, prompts.rows_valid * len(samples_per_model)
    tagged = prompts.valid.map_batches(as_tagged, batch_format="pyarrow").union(committed)
    pending = map_key_groups(tagged, "prompt_id", pending_pairs, PENDING, num_partitions=group_partitions(
        prompts.rows_valid), fn_kwargs={"samples_per_model": samples_per_model}).materialize()
    per_model = {r["model"]: r["count()"] for r in pending.groupby("model").count().take_all()}
    return ({name: pending.map_batches(rows_where, fn_kwargs={"column": "model", "value": name, "schema": PROMPTS},
                                       batch_format="pyarrow")
             for name in samples_per_model if per_model.get(name)}, sum(per_model.values()))


def resolve(prompts: CheckedPrompts, scored_dir: Path, samples_per_model: dict[str, int], keep_truncated: bool
            ) -> Any:
    """Every prompt with its committed samples, through `resolve_prompt`: `RESOLVED` rows, materialized."""
    tagged = prompts.valid.map_batches(as_tagged, batch_format="pyarrow")
    committed = read_committed(scored_dir)
    if committed is not None:
        tagged = tagged.union(committed)
    return map_key_groups(tagged, "prompt_id", resolve_prompt, RESOLVED,
                          num_partitions=group_partitions(prompts.rows_valid),
                          fn_kwargs={"samples_per_model": samples_per_model, "keep_truncated": keep_truncated}
                          ).materialize()


def _tally(batch: pa.Table) -> pa.Table:
    """Ray Data map: the counts of one batch of `RESOLVED` (or `QUARANTINE`) rows, as one JSON row."""
    counts: Counter[str] = Counter()
    n = batch.num_rows
    kinds = batch["kind"].to_pylist() if "kind" in batch.column_names else [QUARANTINED] * n
    cols = {c: (batch[c].to_pylist() if c in batch.column_names else [None] * n)
            for c in ("model", "num_tokens", "finish_reason", "source_model", "stage", "reason", "sample_idx")}
    for i, kind in enumerate(kinds):
        counts[kind] += 1
        if kind == SAMPLE:
            counts[f"sample:{cols['model'][i]}"] += 1
            counts["tokens"] += cols["num_tokens"][i] or 0
            counts["truncated"] += cols["finish_reason"][i] == CUT_AT_MAX_TOKENS
        elif kind == SELECTION:
            counts[f"win:{cols['source_model'][i]}"] += 1
        else:
            counts[f"reason:{cols['stage'][i]}:{cols['reason'][i].split(':', 1)[0]}"] += 1
            counts["sample_error"] += cols["stage"][i] == "generate" and cols["sample_idx"][i] is not None
    return pa.table({"counts": [json.dumps(counts)]})


def tally(*datasets: Any) -> Counter[str]:
    """The counts of these datasets, merged in the driver one batch summary at a time."""
    total: Counter[str] = Counter()
    for ds in datasets:
        for row in ds.map_batches(_tally, batch_format="pyarrow").iter_rows():
            total.update(json.loads(row["counts"]))
    return total


def write_outputs(resolved: Any, prompts: CheckedPrompts, out: Path) -> Counter[str]:
    """Write `samples/`, `selections/` and `quarantine/` (the input's and the resolution's) from the `RESOLVED`
    rows; return their counts."""
    def of_kind(kind: str, schema: pa.Schema) -> Any:
        return resolved.map_batches(rows_where, fn_kwargs={"column": "kind", "value": kind, "schema": schema},
                                    batch_format="pyarrow")

    write_dataset(of_kind(SAMPLE, SCORED), out / "samples", schema=SCORED)
    write_dataset(of_kind(SELECTION, SELECTIONS), out / "selections", schema=SELECTIONS)
    write_dataset(prompts.quarantine.union(of_kind(QUARANTINED, QUARANTINE)), out / "quarantine", schema=QUARANTINE)
    return tally(resolved, prompts.quarantine)


def _engine_starts(since: float) -> dict[str, Any]:
    try:
        return engine_starts(since)
    except Exception as e:  # the state API needs the dashboard, which a cluster may run without
        log.warning("engine start-up times unavailable: %s", e)
        return {}


def _retries() -> dict[str, Any]:
    """What Ray retried in this job (lost actors, lost tasks); the stage's outputs do not depend on it."""
    try:
        return count_retries()
    except Exception as e:  # the state API needs the dashboard, which a cluster may run without
        log.warning("retry counts unavailable: %s", e)
        return {"unavailable": str(e)[:200]}


def run_generate(cfg: GenerateConfig) -> GenerateResult:
    """Run the generation stage and persist `samples/`, `selections/`, `quarantine/` and `summary.json`.

    Prompts, samples and selections stay in Ray Data from the input files to the outputs: the driver holds
    counts only, whatever the number of prompts.
    """
    ensure_ray()
    out = Path(cfg.output_dir)
    prompts = read_prompts(cfg.data.prompts, max_prompt_chars=cfg.data.max_prompt_chars, strict=cfg.data.strict,
                           split=cfg.data.split)
    log.info("prompts: %d in, %d valid, %d quarantined", prompts.rows_in, prompts.rows_valid,
             prompts.rows_quarantined)
    if not prompts.rows_valid:
        write_dataset(prompts.quarantine, out / "quarantine", schema=QUARANTINE)
        raise InputError(f"no valid prompts in {cfg.data.prompts}; see {out / 'quarantine'}")

    scored_dir = out / "scored"
    # selection settings do not change what was generated: a new one re-selects without regenerating
    generation = cfg.model_dump(exclude={"output_dir", "keep_truncated"})
    attempt = start_attempt(scored_dir, fingerprint([generation, input_identity(prompts.files)]))
    n_per_model = {s.name: s.sampling.n for s in cfg.sources}
    pending, pairs_pending = pending_by_source(prompts, scored_dir, n_per_model)
    pairs_reused = prompts.rows_valid * len(n_per_model) - pairs_pending
    log.info("generate: attempt %d, %d (prompt, model) pairs already scored, %d to generate",
             attempt, pairs_reused, pairs_pending)
    t0, started = time.perf_counter(), time.time()
    waves = plan_waves(cfg)
    for i, wave in enumerate(waves):
        todo = {name: ds for name, ds in pending.items() if name in wave}
        if not todo:
            continue
        committed = column_total(score(source_samples(todo, cfg), cfg).map_batches(
            commit_batch, fn_kwargs={"scored_dir": str(scored_dir), "attempt": attempt},
            batch_format="pyarrow", batch_size=None, num_cpus=0.1,
        ), "rows")
        log.info("generate: wave %d/%d (%s): %d scored samples committed in attempt %d", i + 1, len(waves),
                 ", ".join(todo), committed or 0, attempt)
    gen_seconds = time.perf_counter() - t0
    engines = _engine_starts(started) if pairs_pending else {}
    # after the last engine was ready, every engine generates: not so with waves, or pools that grow
    fixed = len(waves) == 1 and all(isinstance(src.pool.concurrency, int) for src in cfg.sources)
    after_start = gen_seconds - engines["all_ready_after_s"] if engines and fixed else None

    counts = write_outputs(resolve(prompts, scored_dir, n_per_model, cfg.keep_truncated), prompts, out)
    names = [s.name for s in cfg.sources]
    selected = counts[SELECTION]
    summary = {
        "stage": "generate",
        "prompts": {"in": prompts.rows_in, "valid": prompts.rows_valid, "out": selected,
                    "quarantined": prompts.rows_in - selected},
        "samples": {
            "expected": prompts.rows_valid * sum(n_per_model.values()),
            "out": counts[SAMPLE], "quarantined": counts["sample_error"], "truncated": counts["truncated"],
            "truncated_selectable": cfg.keep_truncated,
            "per_source": {m: counts[f"sample:{m}"] for m in names},
        },
        "tokens": {"generated": counts["tokens"], "seconds": round(gen_seconds, 2),
                   # after a resume the tokens include reused samples, so a rate would mislead
                   "tokens_per_s": round(counts["tokens"] / gen_seconds, 1) if gen_seconds and not pairs_reused
                   else None,
                   "engines_ready_s": engines.get("all_ready_after_s"),
                   "tokens_per_s_after_start": round(counts["tokens"] / after_start, 1)
                   if after_start and after_start > 0 and not pairs_reused else None},
        "engines": engines,
        "win_shares": {m: (counts[f"win:{m}"] / selected if selected else 0.0) for m in names},
        "waves": waves,
        "retries": _retries(),
        "resume": {"attempt": attempt, "pairs_reused": pairs_reused, "pairs_generated": pairs_pending,
                   "pairs_incomplete": counts["reason:generate:incomplete_samples"]},
        "quarantine_reasons": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("reason:")},
        "output_dir": str(out),
    }
    write_json(summary, out / "summary.json")
    return GenerateResult(output_dir=out, summary=summary)


def _retries_line(retries: dict[str, Any]) -> str:
    if "unavailable" in retries or not retries:
        return "retried   (unknown: Ray's state API unavailable)"
    return ("retried   {actor_restarts} actor restarts ({actor_restarts_preempted} after a preemption), "
            "{task_retries} task retries").format(**retries)


def _after_start(t: dict[str, Any]) -> str:
    if not t.get("tokens_per_s_after_start"):
        return ""
    return (f"; engines ready after {t['engines_ready_s']} s, then {t['tokens_per_s_after_start']} tokens/s")


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-stage report: counts in/out/aside, samples per source, throughput, win shares."""
    p, s, t = summary["prompts"], summary["samples"], summary["tokens"]
    r = summary.get("resume", {"pairs_reused": 0})
    lines = [
        f"prompts   in {p['in']}  valid {p['valid']}  out {p['out']}  quarantined {p['quarantined']}",
        f"samples   expected {s['expected']}  out {s['out']}  quarantined {s['quarantined']}  "
        f"truncated {s.get('truncated', 0)} ({'selectable' if s.get('truncated_selectable') else 'not selectable'})",
        f"tokens    {t['generated']} generated in {t['seconds']} s ({t['tokens_per_s']} tokens/s, "
        "generation + scoring)" + _after_start(t) if t["tokens_per_s"] is not None else
        f"tokens    {t['generated']} in all; this attempt took {t['seconds']} s",
        "resumed   {pairs_reused} (prompt, model) pairs reused, {pairs_generated} generated".format(**r)
        if r["pairs_reused"] else "resumed   no (fresh start)",
        _retries_line(summary.get("retries", {})),
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

"""The evaluation stage: every model answers the held-out prompts (the generate stage with one greedy sample
per prompt), the judge scores the answers, and the report compares each model with the baseline."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from wrpo_ray.config import DataConfig, EvalConfig, GenerateConfig, RewardConfig, SourceModelConfig
from wrpo_ray.data.io import write_json
from wrpo_ray.eval.differences import method_differences
from wrpo_ray.eval.report import (
    format_differences_markdown,
    format_differences_table,
    format_results_markdown,
    format_results_table,
    plot_reward_dynamics,
)
from wrpo_ray.eval.winrate import build_report

log = logging.getLogger(__name__)


def records_from_samples(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per-model report records; `correct` is exact match when the prompt carries an `answer`."""
    records: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        meta = json.loads(s["metadata"] or "{}")
        answer = meta.get("answer")
        records.setdefault(s["model"], []).append({
            "prompt_id": s["prompt_id"], "score": s["reward"], "skill": meta.get("skill"),
            "response": s["response"], "length": len(s["response"]),
            "correct": None if answer is None else float(s["response"].strip() == str(answer)),
        })
    return records


def run_eval(cfg: EvalConfig, judge: RewardConfig, metrics_files: dict[str, Path] | None = None,
             warning: str | None = None) -> dict[str, Any]:
    """Generate with every model, score with `judge`, and write the report; `warning` (the judge's, from
    `config.resolve_judge`) heads the table and is kept in `summary.json` as `judge_warning`."""
    from wrpo_ray.generate.pipeline import run_generate

    out = Path(cfg.output_dir)
    models = [SourceModelConfig(**{**m.model_dump(), "sampling": cfg.sampling,
                                   "engine_kwargs": {**cfg.engine_kwargs, **m.engine_kwargs}, "pool": cfg.pool})
              for m in cfg.models]
    gen = GenerateConfig(seed=cfg.seed, data=DataConfig(prompts=cfg.prompts, split=cfg.prompts_split,
                                                               max_prompt_chars=cfg.max_prompt_chars),
                         sources=models, reward=judge, output_dir=str(out / "generations"),
                         keep_truncated=True)  # every answer is judged as it is, cut or not
    generated = run_generate(gen)
    samples = pq.read_table(str(out / "generations" / "samples")).to_pylist()
    return write_report(cfg, samples, generated.summary, metrics_files, warning)


def write_report(cfg: EvalConfig, samples: list[dict[str, Any]], generation: dict[str, Any],
                 metrics_files: dict[str, Path] | None = None, warning: str | None = None) -> dict[str, Any]:
    """Win rates of the judged samples against the baseline: `results.md`, plots and `summary.json`."""
    out = Path(cfg.output_dir)
    records = records_from_samples(samples)
    reports = build_report(records, cfg.baseline, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    ordered = [reports[m.name] for m in cfg.models if m.name in reports]
    try:
        diffs = method_differences(records, cfg.baseline, [m.name for m in cfg.models], cfg.groups,
                                   n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
        left_out = None
    except ValueError as e:  # the per-model table stands without them
        log.warning("differences between models left out: %s", e)
        diffs, left_out = [], f"differences between models left out: {e}"
    head = "".join(f"WARNING: {w}\n" for w in (warning, left_out) if w)
    table = head + format_results_table(ordered, cfg.baseline) + "\n\n" + format_differences_table(diffs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(head + format_results_markdown(ordered, cfg.baseline) + "\n\n"
                                    + format_differences_markdown(diffs) + "\n")
    plots = []
    for label, path in (metrics_files or {}).items():
        if Path(path).is_file():
            plots.append(str(plot_reward_dynamics(path, out / f"reward_dynamics_{label}.png")))
    summary = {
        "table": table,
        "baseline": cfg.baseline,
        "judge_warning": warning,
        "differences_left_out": left_out,
        "reports": {r.model: r.to_dict() for r in ordered},
        "differences": [d.to_dict() for d in diffs],
        "plots": plots,
        "generation": generation,
    }
    write_json(summary, out / "summary.json")
    return summary

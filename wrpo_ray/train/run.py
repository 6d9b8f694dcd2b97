"""Driver side of the SFT and preference stages: data -> tokenize -> (reference) -> Ray Train -> HF model."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from wrpo_ray.config import PAPER_LR, PreferenceTrainConfig, SftConfig, TrainerSettings, resolve_model_path
from wrpo_ray.data.io import fingerprint, write_json, write_table
from wrpo_ray.data.prompts import InputError, iter_input_rows
from wrpo_ray.data.schemas import QUARANTINE
from wrpo_ray.runtime import ensure_ray
from wrpo_ray.train.loop import CKPT_TAG, LoopSpec, train_loop_per_worker
from wrpo_ray.train.losses import LossConfig
from wrpo_ray.train.preference_data import in_sft_split, normalize_preference_row
from wrpo_ray.train.stages import ReferenceLogps, TokenizeBatch, quarantine_row

log = logging.getLogger(__name__)


def loss_config(cfg: PreferenceTrainConfig) -> LossConfig:
    """The section's objective with the paper's Table 6 values for every hyperparameter left unset."""
    s = cfg.loss
    overrides = {k: v for k, v in {"beta": s.beta, "gamma": s.gamma, "tau": s.tau, "alpha": s.alpha}.items()
                 if v is not None}
    return LossConfig.paper_defaults(s.objective, s.inner, schedule=s.schedule, label_smoothing=s.label_smoothing,
                                     ipo_length_normalize=s.ipo_length_normalize, **overrides)


def read_examples(
    path: str, kind: str, *, pair: str = "on", sft_seed: int | None = None, sft_fraction: float | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Normalised examples, quarantine rows, and counts (`in`, `outside_split` for SFT)."""
    examples, quarantine = [], []
    counts = {"in": 0, "outside_split": 0}
    for index, row, error, raw in iter_input_rows(Path(path)):
        counts["in"] += 1
        if error is not None or row is None:
            quarantine.append({**quarantine_row("input", None, error or "unreadable"), "row_index": index, "raw": raw})
            continue
        ex, reason = normalize_preference_row(row, kind, pair=pair)
        if reason is not None:
            quarantine.append({**quarantine_row("input", row.get("prompt_id"), reason), "row_index": index,
                               "raw": raw})
            continue
        if sft_fraction is not None and not in_sft_split(ex["prompt_id"], sft_seed, sft_fraction):
            counts["outside_split"] += 1
            continue
        examples.append(ex)
    return examples, quarantine, counts


def _null_count(ds: Any, column: str) -> int:
    counts = ds.select_columns([column]).map_batches(
        lambda t: pa.table({"n": [t[column].null_count]}), batch_format="pyarrow")
    return int(counts.sum("n") or 0)


def _latest_checkpoint(storage: Path):
    from ray.train import Checkpoint

    done = sorted(p for p in storage.glob("step-*") if (p / CKPT_TAG).is_dir())
    return Checkpoint.from_directory(str(done[-1])) if done else None


def _run_fingerprint(spec: LoopSpec, examples: list[dict[str, Any]]) -> str:
    # where to stop and how often to log or save do not change the trajectory, so a run may resume across them
    ignored = ("max_steps", "logging_steps", "save_steps", "tensorboard_dir", "metrics_file")
    run = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ignored}
    return fingerprint([run, examples])


def _start_or_continue(storage: Path, metrics_file: Path, fingerprint: str) -> None:
    """Keep the checkpoints of an interrupted run of the same spec and data; clear those of any other.

    Resuming another run's checkpoint (a retrained reference, a new learning rate) would silently train
    from the wrong weights, or not at all when that run had finished.
    """
    marker = storage / "run.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return
    if storage.exists():
        log.info("checkpoints in %s are from another run: cleared", storage)
        shutil.rmtree(storage)
    metrics_file.unlink(missing_ok=True)
    write_json({"fingerprint": fingerprint}, marker)


def _median_step_seconds(metrics_file: Path) -> float | None:
    """Median `seconds_per_step` of the run, its first step (warm-up) left out; None if not logged here."""
    if not metrics_file.is_file():
        return None
    steps = [json.loads(line).get("seconds_per_step") for line in metrics_file.read_text().splitlines()[1:]]
    steps = [s for s in steps if s is not None]
    return round(statistics.median(steps), 4) if steps else None


def run_training(cfg: TrainerSettings, stage: str) -> dict[str, Any]:
    """Run SFT (`stage="sft"`) or preference training; returns the summary written to `summary.json`."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    section = "sft" if stage == "sft" else "train"
    for key in ("policy", "data", "output_dir"):
        if getattr(cfg, key) is None:
            raise InputError(f"{section}.{key} is required")
    if not Path(cfg.data).exists():
        raise InputError(f"{section}.data: {cfg.data!r} does not exist")
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    policy_path = resolve_model_path(cfg.policy.path)
    if stage == "sft":
        assert isinstance(cfg, SftConfig)
        kind, loss_cfg, lr = "sft", None, cfg.learning_rate
        examples, quarantine, counts = read_examples(cfg.data, "sft", sft_seed=cfg.seed,
                                                     sft_fraction=cfg.split_fraction)
    else:
        assert isinstance(cfg, PreferenceTrainConfig)
        loss_cfg = loss_config(cfg)
        kind = "wrpo" if loss_cfg.objective == "wrpo" else "pairwise"
        lr = cfg.learning_rate or PAPER_LR[loss_cfg.name]
        examples, quarantine, counts = read_examples(cfg.data, kind, pair=cfg.loss.pair)
    if not examples:
        write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE), out / "quarantine")
        raise InputError(f"no usable training rows in {cfg.data}; see {out / 'quarantine'}")

    ensure_ray()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    # Ray Data's default of 200 blocks costs a small run seconds of per-block overhead in every stage below
    ds = ray.data.from_items(examples, override_num_blocks=max(1, min(200, len(examples) // 1000))).map_batches(
        TokenizeBatch, batch_format="pyarrow", concurrency=1, num_cpus=0.5,
        fn_constructor_kwargs={"tokenizer_path": policy_path, "chat_template": cfg.policy.chat_template,
                               "max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
                               "trust_remote_code": cfg.policy.trust_remote_code},
    ).materialize()
    bad = ds.map_batches(lambda t: t.filter(pc.invert(pc.is_null(t["error"]))), batch_format="pyarrow")
    quarantine += [quarantine_row("tokenize", r["prompt_id"], r["error"])
                   for r in bad.select_columns(["prompt_id", "error"]).take_all()]
    ds = ds.map_batches(lambda t: t.filter(pc.is_null(t["error"])), batch_format="pyarrow").materialize()
    truncation = ds.select_columns(["prompt_truncated", "responses_truncated"]).to_pandas()

    needs_ref = loss_cfg is not None and loss_cfg.needs_reference
    ref_path = resolve_model_path(cfg.reference.path) if needs_ref and cfg.reference else (
        policy_path if needs_ref else None)
    has_ref_column = needs_ref and _null_count(ds, "ref_logps") == 0
    t_ref = 0.0
    if needs_ref and not has_ref_column and cfg.precompute_reference:
        t0 = time.perf_counter()
        ds = ds.map_batches(ReferenceLogps, batch_format="pyarrow", batch_size=8, concurrency=1, num_cpus=1,
                            fn_constructor_kwargs={"model_path": ref_path,
                                                   "trust_remote_code": cfg.policy.trust_remote_code}).materialize()
        t_ref = time.perf_counter() - t0
        has_ref_column = True

    n = ds.count()
    per_step = cfg.num_workers * cfg.micro_batch_size * cfg.gradient_accumulation_steps
    steps_per_epoch = n // per_step
    if steps_per_epoch == 0:
        raise InputError(f"{n} usable rows < one optimizer step ({per_step} = workers x micro batch x accumulation)")
    total_steps = steps_per_epoch * cfg.epochs
    spec = LoopSpec(
        stage="sft" if stage == "sft" else "preference",
        policy_path=policy_path,
        reference_path=None if has_ref_column else ref_path,
        dtype=cfg.policy.dtype, trust_remote_code=cfg.policy.trust_remote_code,
        loss=dataclasses.asdict(loss_cfg) if loss_cfg else None,
        n_responses={"sft": 1, "wrpo": 3, "pairwise": 2}[kind],
        total_steps=total_steps, max_steps=cfg.max_steps,
        micro_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        warmup_ratio=cfg.warmup_ratio, zero_stage=cfg.zero_stage, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, seed=cfg.seed, tensorboard_dir=str(out / "tensorboard"),
        metrics_file=str(out / "metrics.jsonl"),
    )
    storage = out / "checkpoints"
    _start_or_continue(storage, out / "metrics.jsonl", _run_fingerprint(spec, examples))
    resume = _latest_checkpoint(storage / "run")
    log.info("%s: %d rows, %d optimizer steps (%d per epoch), resume from %s", stage, n, total_steps,
             steps_per_epoch, resume.path if resume else None)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": dataclasses.asdict(spec), "resume_from": resume.path if resume else None},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name="run", storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": ds},
        dataset_config=DataConfig(),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    train_seconds = time.perf_counter() - t0

    final = _latest_checkpoint(storage / "run")
    model_dir = None
    last_step = int(Path(final.path).name.split("-")[1]) if final else 0
    if final and (Path(final.path) / "hf_model").is_dir():
        model_dir = out / "model"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(Path(final.path) / "hf_model", model_dir)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(policy_path, trust_remote_code=cfg.policy.trust_remote_code).save_pretrained(
            model_dir)
    write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE), out / "quarantine",
                sort_by=["stage", "prompt_id"])
    summary = {
        "stage": stage,
        "objective": loss_cfg.name if loss_cfg else "sft",
        "loss": dataclasses.asdict(loss_cfg) if loss_cfg else None,
        "rows": {"in": counts["in"], "outside_split": counts["outside_split"], "examples": len(examples),
                 "trained": n, "quarantined": len(quarantine), "unused_per_epoch": n - steps_per_epoch * per_step},
        "truncated": {"prompts": int(truncation["prompt_truncated"].sum()),
                      "responses": int(truncation["responses_truncated"].sum())},
        "steps": {"total": total_steps, "completed": last_step, "per_epoch": steps_per_epoch},
        "reference": "precomputed column" if has_ref_column else ("frozen model" if ref_path else "none"),
        "seconds": {"reference": round(t_ref, 2), "train": round(train_seconds, 2),
                    "per_step_median": _median_step_seconds(Path(spec.metrics_file))},
        "final_metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        "model_dir": str(model_dir) if model_dir else None,
        "checkpoints": str(storage / "run"),
        "tensorboard": spec.tensorboard_dir,
        "metrics_file": spec.metrics_file,
    }
    write_json(summary, out / "summary.json")
    return summary

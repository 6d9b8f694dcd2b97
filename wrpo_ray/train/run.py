"""The training recipe, driver side: Target-SFT or a preference objective, as one page that reads in order.

    read rows -> tokenize -> reference log-probs -> fit on Ray Train -> export the HF model -> summarise

Each step is a small function below; the workers' side (set-up, train, checkpoint) is `train/worker.py`,
the row order and resume cursor `train/cursor.py`, the data contracts `data/schemas.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from wrpo_ray.config import PAPER_LR, PreferenceTrainConfig, SftConfig, TrainerSettings, resolve_model_path
from wrpo_ray.data.io import column_total, fingerprint, write_json, write_table
from wrpo_ray.data.prompts import InputError, iter_input_rows
from wrpo_ray.data.schemas import QUARANTINE
from wrpo_ray.runtime import ensure_ray
from wrpo_ray.train.cursor import DataOrder
from wrpo_ray.train.losses import LossConfig
from wrpo_ray.train.preference_data import Kind, in_sft_split, normalize_preference_row
from wrpo_ray.train.stages import ReferenceLogps, TokenizeBatch, quarantine_row
from wrpo_ray.train.worker import (
    CKPT_TAG,
    LoopSpec,
    checkpoint_step,
    format_step,
    timings_file,
    train_loop_per_worker,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingStage:
    """What is trained: `sft` (NLL of y_ws) or `preference` (WRPO or a pairwise objective)."""

    name: Literal["sft", "preference"]
    examples: Kind
    loss: LossConfig | None
    learning_rate: float

    @property
    def section(self) -> str:
        """The config section the stage's settings come from."""
        return "sft" if self.name == "sft" else "train"

    @property
    def n_responses(self) -> int:
        return {"sft": 1, "wrpo": 3, "pairwise": 2}[self.examples]

    @property
    def needs_reference(self) -> bool:
        return self.loss is not None and self.loss.needs_reference


def loss_config(cfg: PreferenceTrainConfig) -> LossConfig:
    """The section's objective with the paper's Table 6 values for every hyperparameter left unset."""
    s = cfg.loss
    overrides = {k: v for k, v in {"beta": s.beta, "gamma": s.gamma, "tau": s.tau, "alpha": s.alpha}.items()
                 if v is not None}
    return LossConfig.paper_defaults(s.objective, s.inner, schedule=s.schedule, label_smoothing=s.label_smoothing,
                                     ipo_length_normalize=s.ipo_length_normalize, **overrides)


def describe_stage(cfg: TrainerSettings, name: str) -> TrainingStage:
    if name == "sft":
        assert isinstance(cfg, SftConfig)
        return TrainingStage("sft", "sft", None, cfg.learning_rate)
    if name != "preference":
        raise ValueError(f"unknown training stage {name!r}; expected 'sft' or 'preference'")
    assert isinstance(cfg, PreferenceTrainConfig)
    loss = loss_config(cfg)
    return TrainingStage("preference", "wrpo" if loss.objective == "wrpo" else "pairwise", loss,
                         cfg.learning_rate or PAPER_LR[loss.name])


@dataclass
class Rows:
    """Normalised examples, quarantine rows, and counts (`in`, `outside_split` for SFT)."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"in": 0, "outside_split": 0})


def run_training(cfg: TrainerSettings, stage_name: str) -> dict[str, Any]:
    """Run SFT (`"sft"`) or preference training (`"preference"`); returns the summary written to `summary.json`."""
    stage = describe_stage(cfg, stage_name)
    out = _output_dir(cfg, stage)
    rows = read_rows(cfg, stage)
    if not rows.examples:
        _write_quarantine(rows, out)
        raise InputError(f"no usable training rows in {cfg.data}; see {out / 'quarantine'}")
    ensure_ray()
    t0 = time.perf_counter()
    data, truncation = tokenize(cfg, rows)
    tokenize_seconds = time.perf_counter() - t0
    order = data_order(cfg, data.count())
    if order.steps_per_epoch == 0:
        _write_quarantine(rows, out)
        raise InputError(f"{order.num_rows} usable rows < one optimizer step ({cfg.num_workers} workers x "
                         f"{cfg.micro_batch_size} micro batch x {cfg.gradient_accumulation_steps} accumulation); "
                         f"see {out / 'quarantine'}")
    data, reference, ref_seconds = reference_logps(cfg, stage, data)
    spec = loop_spec(cfg, stage, order, reference, out)
    resume = resume_point(out, spec, cfg, rows.examples)
    log.info("%s: %d rows, %d optimizer steps (%d per epoch), resume from %s", stage.name, spec.num_rows,
             spec.total_steps, order.steps_per_epoch, resume)
    earlier_attempts = len(read_attempts(spec))
    fit_started = time.time()
    result, train_seconds = fit(cfg, spec, data, out / "checkpoints", resume)
    fit_ended = time.time()
    restarts = read_attempts(spec)[earlier_attempts + 1:]
    t0 = time.perf_counter()
    model_dir, last_step = export(cfg, out)
    export_seconds = time.perf_counter() - t0
    _write_quarantine(rows, out)
    summary = {
        "stage": stage.name,
        "objective": stage.loss.name if stage.loss else "sft",
        "loss": dataclasses.asdict(stage.loss) if stage.loss else None,
        "dtype": cfg.policy.dtype,
        "rows": {"in": rows.counts["in"], "outside_split": rows.counts["outside_split"],
                 "examples": len(rows.examples), "trained": spec.num_rows, "quarantined": len(rows.quarantine),
                 "unused_per_epoch": order.unused_per_epoch},
        "truncated": truncation,
        "steps": {"total": spec.total_steps, "completed": last_step, "per_epoch": order.steps_per_epoch},
        "restarts": len(restarts),
        "restarted_from_steps": [a["step"] for a in restarts],
        "reference": reference,
        "seconds": {"tokenize": round(tokenize_seconds, 2), "reference": round(ref_seconds, 2),
                    "train": round(train_seconds, 2), "export": round(export_seconds, 2),
                    "per_step_median": _median_step_seconds(Path(spec.metrics_file)),
                    "train_phases": train_phases(timings_file(spec), fit_started, fit_ended)},
        "final_metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        "model_dir": str(model_dir) if model_dir else None,
        "checkpoints": str(out / "checkpoints" / "run"),
        "tensorboard": spec.tensorboard_dir,
        "metrics_file": spec.metrics_file,
    }
    write_json(summary, out / "summary.json")
    return summary


def _write_quarantine(rows: Rows, out: Path) -> None:
    write_table(pa.Table.from_pylist(rows.quarantine, schema=QUARANTINE), out / "quarantine",
                sort_by=["stage", "prompt_id"])


def _output_dir(cfg: TrainerSettings, stage: TrainingStage) -> Path:
    for key in ("policy", "data", "output_dir"):
        if getattr(cfg, key) is None:
            raise InputError(f"{stage.section}.{key} is required")
    if not Path(cfg.data).exists():
        raise InputError(f"{stage.section}.data: {cfg.data!r} does not exist")
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


# --- 1. read ------------------------------------------------------------------------------------------


def read_rows(cfg: TrainerSettings, stage: TrainingStage) -> Rows:
    """Every input row normalised to `{prompt_id, messages, responses, ref_logps}` or quarantined with a reason.

    SFT keeps only the rows of its split (a hash of seed and prompt_id). Each example gets `row`, its
    position here, which fixes the order training draws its epochs from.
    """
    pair = cfg.loss.pair if isinstance(cfg, PreferenceTrainConfig) else "on"
    in_split = ((lambda pid: in_sft_split(pid, cfg.seed, cfg.split_fraction)) if isinstance(cfg, SftConfig)
                else (lambda pid: True))
    rows = Rows()
    for index, row, error, raw in iter_input_rows(Path(cfg.data), split=cfg.data_split):
        rows.counts["in"] += 1
        if error is not None or row is None:
            rows.quarantine.append({**quarantine_row("input", None, error or "unreadable"), "row_index": index,
                                    "raw": raw})
            continue
        ex, reason = normalize_preference_row(row, stage.examples, pair=pair)
        if reason is not None:
            rows.quarantine.append({**quarantine_row("input", row.get("prompt_id"), reason), "row_index": index,
                                    "raw": raw})
            continue
        if not in_split(ex["prompt_id"]):
            rows.counts["outside_split"] += 1
            continue
        rows.examples.append({**ex, "row": len(rows.examples)})
    return rows


# --- 2. tokenize --------------------------------------------------------------------------------------


def tokenize(cfg: TrainerSettings, rows: Rows) -> tuple[Any, dict[str, int]]:
    """The policy's chat template applied on Ray Data; rows it cannot encode join the quarantine."""
    import ray

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    # Ray Data's default of 200 blocks costs a small run seconds of per-block overhead in every stage below
    blocks = max(1, min(200, len(rows.examples) // 1000))
    ds = ray.data.from_items(rows.examples, override_num_blocks=blocks).map_batches(
        TokenizeBatch, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
        fn_constructor_kwargs={"tokenizer_path": resolve_model_path(cfg.policy.path),
                               "chat_template": cfg.policy.chat_template, "max_length": cfg.max_length,
                               "max_prompt_length": cfg.max_prompt_length,
                               "trust_remote_code": cfg.policy.trust_remote_code,
                               "label_prompt": isinstance(cfg, SftConfig) and not cfg.completion_only_loss},
    ).materialize()
    bad = ds.map_batches(lambda t: t.filter(pc.invert(pc.is_null(t["error"]))), batch_format="pyarrow")
    rows.quarantine += [quarantine_row("tokenize", r["prompt_id"], r["error"])
                        for r in bad.select_columns(["prompt_id", "error"]).take_all()]
    ds = ds.map_batches(lambda t: t.filter(pc.is_null(t["error"])), batch_format="pyarrow").materialize()
    cut = ds.select_columns(["prompt_truncated", "responses_truncated"]).to_pandas()
    return ds, {"prompts": int(cut["prompt_truncated"].sum()), "responses": int(cut["responses_truncated"].sum())}


# --- 3. reference -------------------------------------------------------------------------------------


def reference_logps(cfg: TrainerSettings, stage: TrainingStage, ds: Any) -> tuple[Any, str, float]:
    """Add the frozen reference's log-probs as a column, once, unless the input brought them.

    The actors reserve what one training worker reserves (a GPU each when `use_gpu`, `cpus_per_worker`
    CPUs) and compute in the policy's dtype, so the column matches the policy's own log-probs at step 0.
    Returns the dataset, how the reference enters training, and the seconds spent.
    """
    if not stage.needs_reference:
        return ds, "none", 0.0
    if _null_count(ds, "ref_logps") == 0:
        return ds, "precomputed column (input)", 0.0
    if not cfg.precompute_reference:
        return ds, "frozen model", 0.0
    import ray

    model = cfg.reference or cfg.policy
    resources = reference_resources(cfg)
    t0 = time.perf_counter()
    ds = ds.map_batches(
        ReferenceLogps, batch_format="pyarrow", batch_size=max(1, cfg.micro_batch_size),
        fn_constructor_kwargs={"model_path": resolve_model_path(model.path), "dtype": cfg.policy.dtype,
                               "trust_remote_code": model.trust_remote_code, "packing": cfg.packing},
        compute=ray.data.ActorPoolStrategy(size=resources["actors"]), num_cpus=resources["num_cpus"],
        num_gpus=resources["num_gpus"], resources=resources["custom"] or None,
    ).materialize()
    return ds, "precomputed column", time.perf_counter() - t0


def reference_resources(cfg: TrainerSettings) -> dict[str, Any]:
    """One reference actor per training worker, each reserving what that worker reserves."""
    return {"actors": cfg.num_workers, "num_cpus": cfg.cpus_per_worker, "num_gpus": 1 if cfg.use_gpu else 0,
            "custom": dict(cfg.resources_per_worker)}


def _null_count(ds: Any, column: str) -> int:
    counts = ds.select_columns([column]).map_batches(
        lambda t: pa.table({"n": [t[column].null_count]}), batch_format="pyarrow")
    return column_total(counts, "n")


# --- 4. fit -------------------------------------------------------------------------------------------


def data_order(cfg: TrainerSettings, num_rows: int) -> DataOrder:
    """The row schedule the workers will follow (`train/cursor.py`), for the step counts the driver reports."""
    return DataOrder(num_rows=num_rows, world_size=cfg.num_workers, micro_batch_size=cfg.micro_batch_size,
                     gradient_accumulation_steps=cfg.gradient_accumulation_steps, seed=cfg.seed,
                     shuffle=cfg.shuffle)


def loop_spec(cfg: TrainerSettings, stage: TrainingStage, order: DataOrder, reference: str, out: Path) -> LoopSpec:
    in_loop_reference = stage.needs_reference and reference == "frozen model"
    spec = LoopSpec(
        stage=stage.name,
        policy_path=resolve_model_path(cfg.policy.path),
        reference_path=resolve_model_path((cfg.reference or cfg.policy).path) if in_loop_reference else None,
        dtype=cfg.policy.dtype, trust_remote_code=cfg.policy.trust_remote_code,
        loss=dataclasses.asdict(stage.loss) if stage.loss else None,
        n_responses=stage.n_responses, num_rows=order.num_rows,
        total_steps=order.steps_per_epoch * cfg.epochs, max_steps=cfg.max_steps,
        micro_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=stage.learning_rate, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        warmup_ratio=cfg.warmup_ratio, zero_stage=cfg.zero_stage, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, seed=cfg.seed, shuffle=cfg.shuffle, packing=cfg.packing,
        tensorboard_dir=str(out / "tensorboard"), metrics_file=str(out / "metrics.jsonl"),
        attempts_file=str(out / "checkpoints" / "attempts.jsonl"),
    )
    return spec


def resume_point(out: Path, spec: LoopSpec, cfg: TrainerSettings, examples: list[dict[str, Any]]) -> str | None:
    """The latest checkpoint of an interrupted run of the same settings and data; any other run's are cleared.

    Resuming another run's checkpoint (a retrained reference, a new learning rate or max_length) would
    silently train from the wrong weights, or not at all when that run had finished. Metrics logged after
    the checkpoint (a run that died between two saves) are dropped by the resumed workers
    (`worker.start_attempt`), which log those steps again.
    """
    _start_or_continue(out / "checkpoints", out / "metrics.jsonl", _run_fingerprint(spec, cfg, examples))
    latest = _latest_checkpoint(out / "checkpoints" / "run")
    return str(latest) if latest else None


def read_attempts(spec: LoopSpec) -> list[dict[str, Any]]:
    """Every worker group this run started (`worker.start_attempt`), in order, with the step it resumed from."""
    path = Path(spec.attempts_file)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def _run_fingerprint(spec: LoopSpec, cfg: TrainerSettings, examples: list[dict[str, Any]]) -> str:
    # where to stop and how often to log or save do not change the trajectory, so a run may resume across them
    ignored = ("max_steps", "logging_steps", "save_steps", "tensorboard_dir", "metrics_file", "attempts_file")
    run = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ignored}
    settings = cfg.model_dump(exclude={"max_steps", "logging_steps", "save_steps", "max_failures", "output_dir"})
    return fingerprint([run, settings, examples])


def _start_or_continue(storage: Path, metrics_file: Path, fingerprint: str) -> None:
    marker = storage / "run.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return
    if storage.exists():
        log.info("checkpoints in %s are from another run: cleared", storage)
        shutil.rmtree(storage)
    metrics_file.unlink(missing_ok=True)
    write_json({"fingerprint": fingerprint}, marker)


def _latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in run_dir.glob("step-*") if (p / CKPT_TAG).is_dir())
    return done[-1] if done else None


def fit(cfg: TrainerSettings, spec: LoopSpec, ds: Any, storage: Path, resume: str | None) -> tuple[Any, float]:
    """Ray Train + DeepSpeed. Every worker gets the whole (tokenized) dataset and draws its own micro-batches
    from it by `DataOrder`, so no split of Ray Data's decides which worker sees which row."""
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from wrpo_ray.console import verbose

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": dataclasses.asdict(spec), "resume_from": resume},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}),
        run_config=run_config(cfg, storage),
        datasets={"train": ds},
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    t0 = time.perf_counter()
    with echo_steps(Path(spec.metrics_file), enabled=not verbose()):
        result = fit_off_main_thread(trainer)
    return result, time.perf_counter() - t0


def fit_off_main_thread(trainer: Any) -> Any:
    """`trainer.fit()` in a thread of its own, so that Ctrl-C and SIGTERM stop the driver at once.

    Called from the main thread, Ray Train installs its own SIGINT handler for the rest of the process: it asks
    the run's controller to abort and waits until the controller next polls (9 s measured on 2 CPUs), then
    exits 1, so the command can neither say what was kept nor return 130. From another thread it installs
    none; the signal interrupts the wait below, the command leaves Ray (cli.stopped), and the run's controller
    and workers end with the driver, as every actor of the job does. The checkpoints registered so far are
    what the same command resumes from.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 (handed to the main thread as is)
            outcome["error"] = e

    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_config(cfg: TrainerSettings, storage: Path) -> Any:
    """Checkpoints under `storage/run`; a lost worker makes Ray Train restart the whole worker group from the
    latest checkpoint, up to `max_failures` times."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig

    from wrpo_ray.console import verbose

    return RunConfig(name="run", storage_path=str(storage), checkpoint_config=CheckpointConfig(num_to_keep=2),
                     failure_config=FailureConfig(max_failures=cfg.max_failures),
                     logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"))


@contextlib.contextmanager
def echo_steps(metrics_file: Path, enabled: bool) -> Iterator[None]:
    """Print every step rank 0 logs to `metrics.jsonl` while training runs.

    The workers' own output stays in the Ray session's log files unless the console is verbose, so the
    driver follows the metrics file instead (on a cluster it lies on the shared output storage).
    """
    if not enabled:
        yield
        return
    stop = threading.Event()
    echo = StepEcho(metrics_file, lambda line: print(line, flush=True))

    def follow() -> None:
        while not stop.wait(1.0):
            echo.poll()
        echo.poll()

    thread = threading.Thread(target=follow, name="echo-steps", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class StepEcho:
    """Shows each line of `metrics.jsonl` once; the lines already in the file when it starts count as shown.

    A worker group that Ray Train restarts replaces the file without the steps logged after the checkpoint
    it resumes from (`worker.drop_metrics_after`) and logs them again. A replaced file is read again from
    its start, and a line is shown unless the very same line was shown for its step.
    """

    def __init__(self, metrics_file: Path, show: Callable[[str], None]) -> None:
        self.path, self.show = metrics_file, show
        self.inode: int | None = None
        self.offset = 0
        self.shown: dict[int, int] = {}
        self._read(show_lines=False)

    def poll(self) -> None:
        self._read(show_lines=True)

    def _read(self, show_lines: bool) -> None:
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_ino != self.inode or stat.st_size < self.offset:
                    self.inode, self.offset = stat.st_ino, 0
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(whole)
        for line in whole.decode().splitlines():
            metrics = json.loads(line)
            if self.shown.get(metrics["step"]) != hash(line):
                self.shown[metrics["step"]] = hash(line)
                if show_lines:
                    self.show(format_step(metrics))


# --- 5. export and summarise --------------------------------------------------------------------------


def export(cfg: TrainerSettings, out: Path) -> tuple[Path | None, int]:
    """Copy the final checkpoint's HF model (and the policy's tokenizer) to `out/model`; the last step trained."""
    from transformers import AutoTokenizer

    final = _latest_checkpoint(out / "checkpoints" / "run")
    if final is None:
        return None, 0
    last_step = checkpoint_step(final)
    if not (final / "hf_model").is_dir():
        return None, last_step
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(final / "hf_model", model_dir)
    policy_path = resolve_model_path(cfg.policy.path)
    AutoTokenizer.from_pretrained(policy_path, trust_remote_code=cfg.policy.trust_remote_code).save_pretrained(
        model_dir)
    return model_dir, last_step


def train_phases(timings: Path, fit_started: float, fit_ended: float) -> dict[str, float]:
    """Where `fit()`'s wall time went, from rank 0's `timings.jsonl` lines of the worker groups this fit started:
    `worker_group_start` (Ray Train's controller, placement and the workers' processes, until the first
    group's entry point ran), each worker phase summed over the groups that finished, `lost_groups` (from the
    start of a group that never ended to the start of the next) and `after_workers` (from the last group's end
    to `fit()` returning: the final checkpoint's registration, tear-down)."""
    if not timings.is_file():
        return {}
    lines = []
    for line in timings.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # a line a killed worker left unfinished, or one appended to it
            continue
    groups: dict[str, dict[str, Any]] = {}
    for record in lines:
        if record.get("started", 0.0) >= fit_started - 1.0:
            groups.setdefault(record.get("group", str(len(groups))), {}).update(record)
    ordered = sorted(groups.values(), key=lambda g: g["started"])
    if not ordered:
        return {}
    phases: dict[str, float] = {"worker_group_start": ordered[0]["started"] - fit_started}
    for i, g in enumerate(ordered):
        if "ended" not in g:
            until = ordered[i + 1]["started"] if i + 1 < len(ordered) else fit_ended
            phases["lost_groups"] = phases.get("lost_groups", 0.0) + until - g["started"]
            continue
        for k, v in g["seconds"].items():
            phases[k] = phases.get(k, 0.0) + v
    last_end = max((g["ended"] for g in ordered if "ended" in g), default=None)
    if last_end is not None:
        phases["after_workers"] = fit_ended - last_end
    return {k: round(v, 2) for k, v in phases.items()}


def _median_step_seconds(metrics_file: Path) -> float | None:
    """Median `seconds_per_step` of the run, its first step (warm-up) left out; None if not logged here."""
    if not metrics_file.is_file():
        return None
    steps = [json.loads(line).get("seconds_per_step") for line in metrics_file.read_text().splitlines()[1:]]
    steps = [s for s in steps if s is not None]
    return round(statistics.median(steps), 4) if steps else None

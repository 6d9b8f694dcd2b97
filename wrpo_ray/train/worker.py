"""What one Ray Train worker does: set up, train, checkpoint. The same loop serves SFT and preference stages.

SFT minimises the token-mean NLL of y_ws; a preference step computes the summed log-probs of every
response with the fused kernel and calls `losses.compute_loss`. DeepSpeed (ZeRO stage from the config)
owns the optimizer, gradient accumulation and checkpoint shards; Ray Train owns the workers and checkpoint
storage; `cursor.DataOrder` decides which rows every micro-batch holds, so a resumed run trains on exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wrpo_ray.train.cursor import DataOrder
from wrpo_ray.train.losses import LossConfig, PreferenceLogps, compute_loss

CKPT_TAG = "ds"


@dataclass(frozen=True)
class LoopSpec:
    """Everything a worker needs, resolved on the driver (paths are local model directories)."""

    stage: str  # TrainingStage.name: "sft" | "preference"
    policy_path: str
    reference_path: str | None
    dtype: str
    trust_remote_code: bool
    loss: dict[str, Any] | None
    n_responses: int
    num_rows: int
    total_steps: int
    max_steps: int | None
    micro_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    warmup_ratio: float
    zero_stage: int
    logging_steps: int
    save_steps: int | None
    seed: int
    shuffle: bool
    packing: str
    tensorboard_dir: str
    metrics_file: str
    attempts_file: str


def deepspeed_config(spec: LoopSpec, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        "gradient_clipping": spec.max_grad_norm,
        "optimizer": {"type": "AdamW", "params": {"lr": spec.learning_rate, "weight_decay": spec.weight_decay,
                                                  "torch_adam": True}},
        "zero_optimization": {"stage": spec.zero_stage},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def cosine_with_warmup(total_steps: int, warmup_ratio: float):
    """LR multiplier: linear warmup over `warmup_ratio` of the steps, then cosine decay to 0."""
    warmup = int(math.ceil(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class Worker:
    """The state one worker trains with."""

    spec: LoopSpec
    rank: int
    engine: Any
    scheduler: Any
    reference: Any
    loss_cfg: LossConfig | None
    rows: Any  # pyarrow.Table of tokenized rows, in `row` order
    order: DataOrder
    pad_id: int
    device: torch.device
    step: int
    phases: PhaseClock


class PhaseClock:
    """Rank 0's wall time per phase of one worker group's attempt, in `timings.jsonl` beside the metrics: where a
    stage's time goes besides the optimizer steps (model load, DeepSpeed set-up, the data shard, checkpoints).

    A group writes one line when it starts and one when it ends, both with its `group` id and wall-clock epochs,
    so the driver can tell Ray Train's own start-up and tear-down from the workers' time, and a group that was
    lost (a start without an end) from one that finished."""

    def __init__(self) -> None:
        self.group = uuid.uuid4().hex[:12]
        self.started = time.time()
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """Charge the time since the previous mark to `phase`."""
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now

    def begin(self, path: Path) -> None:
        self._append(path, {"group": self.group, "started": round(self.started, 3)})

    def write(self, path: Path, step: int) -> None:
        self._append(path, {"group": self.group, "started": round(self.started, 3), "ended": round(time.time(), 3),
                            "step": step, "seconds": {k: round(v, 3) for k, v in self.seconds.items()}})

    @staticmethod
    def _append(path: Path, record: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def timings_file(spec: LoopSpec) -> Path:
    return Path(spec.metrics_file).with_name("timings.jsonl")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point."""
    import ray.train

    phases = PhaseClock()
    spec = LoopSpec(**config["spec"])
    if ray.train.get_context().get_world_rank() == 0:
        phases.begin(timings_file(spec))
    worker = setup(spec, config.get("resume_from"), phases)
    train(worker)
    if worker.rank == 0:
        phases.write(timings_file(worker.spec), worker.step)


def setup(spec: LoopSpec, resume_from: str | None, phases: PhaseClock) -> Worker:
    """Load the policy (and a frozen reference when no column was precomputed), DeepSpeed, the data, the step."""
    from wrpo_ray.runtime import use_cpu_accelerator_if_no_gpu

    use_cpu_accelerator_if_no_gpu()
    import deepspeed
    import ray.train
    from transformers import AutoTokenizer

    from wrpo_ray.console import verbose
    from wrpo_ray.runtime import local_device, resolve_dtype
    from wrpo_ray.train.batching import padding_id
    from wrpo_ray.train.policy import SequenceLogprobs, load_causal_lm

    if not verbose():
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    phases.mark("imports")
    torch.manual_seed(spec.seed)
    device = local_device()
    dtype = resolve_dtype(spec.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(spec.policy_path, trust_remote_code=spec.trust_remote_code)
    policy = SequenceLogprobs(load_causal_lm(spec.policy_path, dtype, spec.trust_remote_code))
    policy.lm.config.use_cache = False
    loss_cfg = LossConfig(**spec.loss) if spec.loss else None
    reference = None
    if spec.reference_path and loss_cfg is not None and loss_cfg.needs_reference:
        reference = SequenceLogprobs(load_causal_lm(spec.reference_path, dtype, spec.trust_remote_code))
        reference = reference.eval().to(device)
        reference.requires_grad_(False)
    phases.mark("load_model")

    engine, _, _, scheduler = deepspeed.initialize(
        model=policy,
        model_parameters=[p for p in policy.parameters() if p.requires_grad],
        config=deepspeed_config(spec, dtype),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(spec.total_steps, spec.warmup_ratio)),
        dist_init_required=False,
    )
    phases.mark("deepspeed_init")
    checkpoint = ray.train.get_checkpoint() or (ray.train.Checkpoint(resume_from) if resume_from else None)
    step = checkpoint_step(Path(checkpoint.path)) if checkpoint else 0
    if ctx.get_world_rank() == 0:
        start_attempt(spec, step)
    if checkpoint:
        with checkpoint.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag=CKPT_TAG)
        if int(client["step"]) != step:
            raise RuntimeError(f"checkpoint {checkpoint.path} holds step {client['step']}, not {step}")
        phases.mark("load_checkpoint")
    order = DataOrder(num_rows=spec.num_rows, world_size=ctx.get_world_size(), micro_batch_size=spec.micro_batch_size,
                      gradient_accumulation_steps=spec.gradient_accumulation_steps, seed=spec.seed,
                      shuffle=spec.shuffle)
    rows = _all_rows(spec.num_rows)
    phases.mark("data_shard")
    return Worker(spec=spec, rank=ctx.get_world_rank(), engine=engine, scheduler=scheduler, reference=reference,
                  loss_cfg=loss_cfg, rows=rows, order=order, pad_id=padding_id(tokenizer),
                  device=device, step=step, phases=phases)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step of a `step-NNNNNN` checkpoint directory."""
    return int(checkpoint.name.split("-")[1])


def start_attempt(spec: LoopSpec, step: int) -> None:
    """Rank 0 of every worker group, before training: the metrics an earlier group logged after the checkpoint
    this one resumes from are dropped (this group logs those steps again), and the attempt is recorded."""
    drop_metrics_after(Path(spec.metrics_file), step)
    with open(spec.attempts_file, "a") as f:
        f.write(json.dumps({"step": step, "time": round(time.time(), 3)}) + "\n")


def drop_metrics_after(metrics_file: Path, step: int) -> None:
    """Keep the lines of steps <= `step` (a line cut short by a killed writer goes too). The file is replaced
    whole, never rewritten in place, so a reader sees the old file or the new one."""
    if not metrics_file.is_file():
        return
    lines = metrics_file.read_text().splitlines(keepends=True)
    kept = [line for line in lines if (s := _logged_step(line)) is not None and s <= step]
    if len(kept) != len(lines):
        tmp = metrics_file.with_name(metrics_file.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, metrics_file)


def _logged_step(line: str) -> int | None:
    if not line.endswith("\n"):
        return None
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _all_rows(expected: int):
    """Every tokenized row, sorted by `row`: each worker picks its micro-batches from it by index."""
    import pyarrow as pa
    import ray.train

    from wrpo_ray.console import quiet_ray_data

    quiet_ray_data()
    shard = ray.train.get_dataset_shard("train")
    table = pa.concat_tables(list(shard.iter_batches(batch_format="pyarrow", batch_size=4096)))
    if table.num_rows != expected:
        raise RuntimeError(f"worker received {table.num_rows} rows, expected {expected}")
    return table.sort_by("row")


def train(w: Worker) -> None:
    """Optimizer steps from the resumed step to the last; log, checkpoint."""
    import torch.distributed as dist

    from wrpo_ray.train.packing import make_batch

    spec = w.spec
    writer = _tensorboard(spec, w.step) if w.rank == 0 else None
    last_step = min(spec.total_steps, spec.max_steps or spec.total_steps)
    window: list[dict[str, torch.Tensor]] = []
    metrics: dict[str, float] = {}
    t_window, logged_step = time.perf_counter(), w.step
    for step, _, indices in w.order.schedule(w.step, last_step, w.rank):
        rows = w.rows.take(indices).to_pylist()
        batch = make_batch(rows, spec.packing, w.pad_id, w.device)
        if spec.stage == "sft":
            loss, step_metrics = _sft_step(w.engine, batch)
        else:
            loss, step_metrics = _preference_step(w, batch, step)
        w.engine.backward(loss)
        boundary = w.engine.is_gradient_accumulation_boundary()
        w.engine.step()
        window.append({"loss": loss.detach(), **step_metrics})
        if not boundary:
            continue
        w.step = step + 1
        epoch, _ = w.order.position(step)
        if w.step % spec.logging_steps == 0 or w.step == last_step:
            step_s = (time.perf_counter() - t_window) / (w.step - logged_step)
            metrics = _log(window, w.step, epoch + 1, w.scheduler.get_last_lr()[0], step_s, writer, dist,
                           spec.metrics_file, w.device)
            window, logged_step = [], w.step
        if w.step == last_step or (spec.save_steps and w.step % spec.save_steps == 0):
            w.phases.mark("steps")
            checkpoint(w, metrics, with_model=w.step == last_step)
            w.phases.mark("checkpoints")
        if logged_step == w.step:
            t_window = time.perf_counter()
    if writer is not None:
        writer.close()
    w.phases.mark("steps")


def _tensorboard(spec: LoopSpec, step: int):
    """Events an earlier attempt wrote after `step` are purged: this attempt logs those steps again."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(spec.tensorboard_dir, purge_step=step + 1 if step else None)


def _sft_step(engine, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logps, n_tokens = engine(batch)
    total = n_tokens.sum().clamp(min=1)
    loss = -logps.sum() / total
    return loss, {"nll": loss.detach(), "tokens": total.detach().float()}


def _preference_step(w: Worker, batch, step: int):
    """The loss of one micro-batch; `logps/ref_abs_diff` is mean |log pi - log pi_ref| over its responses,
    ~0 at the first step, when the policy still is the reference."""
    spec = w.spec
    from wrpo_ray.train.packing import reference_logps_of

    logps, n_tokens = w.engine(batch)
    shape = (-1, spec.n_responses)
    ref = reference_logps_of(batch)
    if ref is None and w.reference is not None:
        with torch.no_grad():
            ref, _ = w.reference(batch)
    if ref is not None:
        ref = ref.view(shape).to(logps.dtype)
    out = compute_loss(w.loss_cfg, PreferenceLogps(logps.view(shape), ref, n_tokens.view(shape).float()),
                       step=step, total_steps=spec.total_steps)
    metrics = dict(out.metrics)
    if ref is not None:
        metrics["logps/ref_abs_diff"] = (logps.detach().view(shape).float() - ref.float()).abs().mean()
    return out.losses.mean(), metrics


def _log(window, step, epoch, lr, step_s, writer, dist, metrics_file: str, device: torch.device) -> dict[str, float]:
    """Average the window's metrics over micro-batches and workers; rank 0 writes TensorBoard and JSONL.

    `seconds_per_step` is rank 0's wall time per optimizer step since the last log: reading the batches,
    forward, backward and the optimizer step, without logging, reporting to Ray Train or checkpointing
    (the workers wait for each other at every step, so the ranks agree to within a step). `epoch` counts from 1.
    The reduction runs on the worker's device: NCCL reduces CUDA tensors only.

    Metrics reach Ray Train only with checkpoints (`checkpoint`): every `ray.train.report` is a barrier of all
    workers through the run's controller, measured at 1.4 s per call on 2 CPU workers, 60 s of a 34-step run."""
    keys = sorted(window[0])
    local = torch.stack([torch.stack([w[k].detach().float().to(device) for w in window]).mean() for k in keys])
    if dist.is_initialized():
        dist.all_reduce(local)
        local /= dist.get_world_size()
    local = local.cpu()
    metrics = {k: float(v) for k, v in zip(keys, local, strict=True)}
    metrics.update({"step": step, "epoch": epoch, "lr": lr, "seconds_per_step": step_s})
    if writer is not None:
        for k, v in metrics.items():
            if k != "step":
                writer.add_scalar(k, v, step)
        writer.flush()
        with open(metrics_file, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        print(format_step(metrics), flush=True)
    return metrics


def format_step(metrics: dict[str, float]) -> str:
    """One console line per logged step: the loss and the paper's Figure 3 headline metrics."""
    shown = ("loss", "nll", "rewards/margins", "rewards/accuracies", "alpha", "logps/ref_abs_diff", "lr",
             "seconds_per_step")
    return (f"step {metrics['step']} (epoch {metrics.get('epoch', '?')}) "
            + " ".join(f"{k}={metrics[k]:.4g}" for k in shown if k in metrics))


def checkpoint(w: Worker, metrics: dict[str, float], with_model: bool) -> None:
    """Every rank saves its ZeRO shards; Ray Train gathers all ranks' files into one checkpoint.

    The last checkpoint also holds the full model in HF format (`hf_model/`), gathered on rank 0.
    """
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as d:
        w.engine.save_checkpoint(d, tag=CKPT_TAG, client_state={"step": w.step})
        if with_model:
            _save_hf(w.engine, os.path.join(d, "hf_model") if w.rank == 0 else None)
        ray.train.report({**metrics, "step": w.step}, checkpoint=Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"step-{w.step:06d}")


def _save_hf(engine, out_dir: str | None) -> None:
    """Gather the full weights (a collective under ZeRO-3) and save them in HF format on rank 0."""
    import deepspeed

    module = engine.module.lm
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=engine.zero_optimization_stage() == 3):
        if out_dir is not None:
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)

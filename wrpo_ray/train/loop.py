"""The per-worker training loop run by Ray Train's TorchTrainer, for SFT and preference objectives.

One loop, two step functions: SFT minimises the token-mean NLL of y_ws; a preference step computes the
summed log-probs of every response with the fused kernel and calls `losses.compute_loss`. DeepSpeed
(ZeRO stage from the config) owns the optimizer, gradient accumulation and checkpoint shards; Ray Train
owns the workers, the data shards and checkpoint storage.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from wrpo_ray.train.losses import LossConfig, PreferenceLogps, compute_loss

CKPT_TAG = "ds"


@dataclass(frozen=True)
class LoopSpec:
    """Everything a worker needs, resolved on the driver (paths are local model directories)."""

    stage: str  # "sft" | "preference"
    policy_path: str
    reference_path: str | None
    dtype: str
    trust_remote_code: bool
    loss: dict[str, Any] | None
    n_responses: int
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
    tensorboard_dir: str
    metrics_file: str


def deepspeed_config(spec: LoopSpec, bf16: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        "gradient_clipping": spec.max_grad_norm,
        "optimizer": {"type": "AdamW", "params": {"lr": spec.learning_rate, "weight_decay": spec.weight_decay,
                                                  "torch_adam": True}},
        "zero_optimization": {"stage": spec.zero_stage},
        "bf16": {"enabled": bf16},
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


def _load_lm(path: str, spec: LoopSpec, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=spec.trust_remote_code)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _sft_step(engine, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logps, n_tokens = engine(batch["input_ids"], batch["attention_mask"], batch["labels"])
    total = n_tokens.sum().clamp(min=1)
    loss = -logps.sum() / total
    return loss, {"nll": loss.detach(), "tokens": total.detach().float()}


def _preference_step(engine, batch, spec: LoopSpec, loss_cfg: LossConfig, reference, step: int):
    logps, n_tokens = engine(batch["input_ids"], batch["attention_mask"], batch["labels"])
    shape = (-1, spec.n_responses)
    ref = batch.get("ref_logps")
    if ref is None and reference is not None:
        with torch.no_grad():
            ref, _ = reference(batch["input_ids"], batch["attention_mask"], batch["labels"])
        ref = ref.view(shape)
    out = compute_loss(loss_cfg, PreferenceLogps(logps.view(shape), ref, n_tokens.view(shape).float()),
                       step=step, total_steps=spec.total_steps)
    return out.losses.mean(), out.metrics


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from wrpo_ray.runtime import use_cpu_accelerator_if_no_gpu

    use_cpu_accelerator_if_no_gpu()
    import deepspeed
    import ray.train
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from wrpo_ray.train.batching import collate
    from wrpo_ray.train.policy import SequenceLogprobs

    spec = LoopSpec(**config["spec"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(spec.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32

    tokenizer = AutoTokenizer.from_pretrained(spec.policy_path, trust_remote_code=spec.trust_remote_code)
    policy = SequenceLogprobs(_load_lm(spec.policy_path, spec, dtype))
    policy.lm.config.use_cache = False
    loss_cfg = LossConfig(**spec.loss) if spec.loss else None
    reference = None
    if spec.reference_path and loss_cfg is not None and loss_cfg.needs_reference:
        reference = SequenceLogprobs(_load_lm(spec.reference_path, spec, dtype)).eval().to(device)
        reference.requires_grad_(False)

    engine, _, _, scheduler = deepspeed.initialize(
        model=policy,
        model_parameters=[p for p in policy.parameters() if p.requires_grad],
        config=deepspeed_config(spec, bf16),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(spec.total_steps, spec.warmup_ratio)),
        dist_init_required=False,
    )

    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(config["resume_from"])
    if checkpoint:
        with checkpoint.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag=CKPT_TAG)
        step = int(client["step"])

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(spec.tensorboard_dir)

    last_step = min(spec.total_steps, spec.max_steps or spec.total_steps)
    micro_per_step = spec.gradient_accumulation_steps
    skip = step * micro_per_step
    shard = ray.train.get_dataset_shard("train")
    window: list[dict[str, torch.Tensor]] = []
    done = step >= last_step
    last_metrics: dict[str, float] = {}
    t_window, logged_step = time.perf_counter(), step
    while not done:
        seen = 0
        for rows in shard.iter_batches(batch_size=spec.micro_batch_size, batch_format="pyarrow", drop_last=True):
            if seen < skip:
                seen += 1
                continue
            batch = _to_device(collate(rows.to_pylist(), tokenizer.pad_token_id), device)
            if spec.stage == "sft":
                loss, metrics = _sft_step(engine, batch)
            else:
                loss, metrics = _preference_step(engine, batch, spec, loss_cfg, reference, step)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            window.append({"loss": loss.detach(), **metrics})
            if not boundary:
                continue
            step += 1
            if step % spec.logging_steps == 0 or step == last_step:
                step_s = (time.perf_counter() - t_window) / (step - logged_step)
                last_metrics = _log(window, step, scheduler.get_last_lr()[0], step_s, writer, dist, spec.metrics_file)
                window, logged_step = [], step
            if step == last_step or (spec.save_steps and step % spec.save_steps == 0):
                _checkpoint(engine, step, rank, last_metrics, with_model=step == last_step)
            if logged_step == step:
                t_window = time.perf_counter()
            if step >= last_step:
                done = True
                break
        skip = 0
    if writer is not None:
        writer.close()


def _log(window, step, lr, step_s, writer, dist, metrics_file: str) -> dict[str, float]:
    """Average the window's metrics over micro-batches and workers; rank 0 writes TensorBoard and JSONL.

    `seconds_per_step` is rank 0's wall time per optimizer step since the last log: reading the batches,
    forward, backward and the optimizer step, without logging, reporting to Ray Train or checkpointing
    (the workers wait for each other at every step, so the ranks agree to within a step)."""
    import json

    import ray.train

    keys = sorted(window[0])
    local = torch.stack([torch.stack([w[k].float().cpu() for w in window]).mean() for k in keys])
    if dist.is_initialized():
        dist.all_reduce(local)
        local /= dist.get_world_size()
    metrics = {k: float(v) for k, v in zip(keys, local, strict=True)}
    metrics.update({"step": step, "lr": lr, "seconds_per_step": step_s})
    if writer is not None:
        for k, v in metrics.items():
            if k != "step":
                writer.add_scalar(k, v, step)
        writer.flush()
        with open(metrics_file, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        print("step " + str(step) + "  " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step"),
              flush=True)
    ray.train.report(metrics)
    return metrics


def _checkpoint(engine, step: int, rank: int, metrics: dict[str, float], with_model: bool) -> None:
    """Every rank saves its ZeRO shards; Ray Train gathers all ranks' files into one checkpoint.

    The last checkpoint also holds the full model in HF format (`hf_model/`), gathered on rank 0.
    """
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as d:
        engine.save_checkpoint(d, tag=CKPT_TAG, client_state={"step": step})
        if with_model:
            _save_hf(engine, os.path.join(d, "hf_model") if rank == 0 else None)
        ray.train.report({**metrics, "step": step}, checkpoint=Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"step-{step:06d}")


def _save_hf(engine, out_dir: str | None) -> None:
    """Gather the full weights (a collective under ZeRO-3) and save them in HF format on rank 0."""
    import deepspeed

    module = engine.module.lm
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=engine.zero_optimization_stage() == 3):
        if out_dir is not None:
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)

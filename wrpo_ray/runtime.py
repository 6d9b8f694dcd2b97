"""Connecting to Ray: the cluster of `ray job submit` or `RAY_ADDRESS`, else a local one."""

from __future__ import annotations

import os

WORKER_ENV = {
    "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", ""),
    "TOKENIZERS_PARALLELISM": "false",
}


def ensure_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    env = {k: v for k, v in WORKER_ENV.items() if v}
    ray.init(
        address=os.environ.get("RAY_ADDRESS"),
        runtime_env={"env_vars": env} if env else None,
        log_to_driver=True,
    )


def use_cpu_accelerator_if_no_gpu() -> None:
    """DeepSpeed picks its accelerator at import; without a GPU it must be told to use the CPU."""
    if "DS_ACCELERATOR" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"

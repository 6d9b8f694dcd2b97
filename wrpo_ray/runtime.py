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

"""Connecting to Ray: the cluster of `ray job submit` or `RAY_ADDRESS`, else a local one."""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

WORKER_ENV = {
    "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", ""),
    "TOKENIZERS_PARALLELISM": "false",
}

# Ray's own cleanup of what a worker leaves: each worker runs in its own process group, which the raylet kills
# when the worker ends, however it ends (a vLLM engine's processes, a dataloader's, a compile pool's). Set for
# the local instance a driver starts here, and by the cluster configs (placement.py) for every node.
RAY_NODE_ENV = {"RAY_process_group_cleanup_enabled": "1"}

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_session_dir: str | None = None


class Stopped(BaseException):
    """A stop signal (SIGTERM from a process manager or `ray job stop`, SIGHUP): unwinds like Ctrl-C does,
    so every stage's cleanup runs and the command says how to resume."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def unwind_on_stop_signals() -> None:
    """SIGTERM and SIGHUP raise `Stopped` in the main thread.

    Replaces the handler `ray.init` installs, which (for a local instance) kills the instance and exits 1 from
    inside whatever the driver was doing, so no `finally` of ours runs and nothing says what was kept.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _raise_stopped)


def ensure_ray() -> str | None:
    """Connect once; returns the Ray session's directory (its `logs/` holds every worker's output)."""
    import ray

    from wrpo_ray.console import quiet_ray_data, verbose, worker_env

    global _session_dir
    if ray.is_initialized():
        return _session_dir
    taken = _job_env_vars()
    env = {k: v for k, v in {**WORKER_ENV, **worker_env()}.items() if v and k not in taken}
    address = os.environ.get("RAY_ADDRESS")
    if not address:  # ray.init starts a local instance, whose raylet reads its settings from this environment
        for key, value in RAY_NODE_ENV.items():
            os.environ.setdefault(key, value)
    context = ray.init(
        address=address,
        runtime_env={"env_vars": env} if env else None,
        log_to_driver=verbose(),  # otherwise every worker's output stays in the session's log files
    )
    _session_dir = (getattr(context, "address_info", None) or {}).get("session_dir")  # none under Ray Client
    quiet_ray_data()
    unwind_on_stop_signals()
    return _session_dir


def disconnect() -> None:
    """Leave Ray: a local instance this process started is stopped with every process it holds; on a cluster the
    job's actors end with the driver's connection (none of ours is detached; Ray Data's cluster-wide
    singletons, which reserve nothing, stay for the next job)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _job_env_vars() -> set[str]:
    """Variables the submitted job's runtime env already sets: Ray refuses to merge a second value for them."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return set()
    try:
        return set((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return set()


def session_dir() -> str | None:
    """The Ray session directory this process connected to, if it did."""
    return _session_dir


def use_cpu_accelerator_if_no_gpu() -> None:
    """DeepSpeed picks its accelerator at import; without a GPU it must be told to use the CPU."""
    if "DS_ACCELERATOR" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_dtype(name: str, device: Any) -> Any:
    """The torch dtype of a model's `dtype` setting: `auto` is bf16 on a GPU that supports it, else fp32.

    Every model loader resolves its setting here (policy, in-loop reference, reference stage, reward model),
    so the reference log-probs are computed in the dtype the policy trains in.
    """
    import torch

    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected auto or one of {sorted(DTYPE_NAMES)}")
    return getattr(torch, name)


def local_device() -> Any:
    """The GPU Ray assigned to this process (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

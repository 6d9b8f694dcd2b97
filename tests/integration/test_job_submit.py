"""The real submission path: a local head started with `ray start`, the tiny job sent with `ray job submit`."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from wrpo_ray.toy.task import make_examples, write_jsonl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: int = 300) -> str:
    """Runs the `ray` CLI; returns stdout and stderr together (its status lines go to stderr)."""
    proc = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    return f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    import ray

    ray.shutdown()
    temp = Path("/tmp") / f"wrpo-head-{os.getpid()}"
    dash = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    gen = _ray("get-auth-token", "--generate", env=env)
    assert gen.startswith("rc=0"), gen
    start = _ray("start", "--head", f"--port={_free_port()}", f"--dashboard-port={dash}",
                 "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
                 env=env)
    try:
        assert start.startswith("rc=0"), start
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _ray("stop", "--force", env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_tiny_generate_job_succeeds(head, tmp_path):
    address, env = head
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(make_examples(6, seed=5), prompts)
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"run_name": "submit-test", "generate": {
        "output_dir": str(out), "data": {"prompts": str(prompts)},
        "sources": [{"name": "llama-src", "path": "toy://llama", "dtype": "float32",
                     "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20, "max_model_len": 256},
                     "sampling": {"n": 2, "max_tokens": 8}, "pool": {"num_cpus": 1}}],
        "reward": {"verifier": "wrpo_ray.toy.task:verify"},
    }}))
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--no-wait",
         "--", "python", "-m", "jobs.generate", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    job_id = next(line.split("'")[1] for line in submit.stdout.splitlines() if "submitted successfully" in line)

    status = ""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = _ray("job", "status", "--address", address, job_id, env=env).lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    logs = _ray("job", "logs", "--address", address, job_id, env=env)
    assert "succeeded" in status, logs[-4000:]
    assert "win share" in logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"]["out"] == 6
    assert summary["samples"]["out"] == 12

"""The real submission path: a local head started with `ray start`, the tiny job sent with `ray job submit`."""

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.integration.ray_heads import BIN, free_port, ray_cli, stop_head
from wrpo_ray.toy.task import make_examples, write_jsonl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    import ray

    ray.shutdown()
    temp = Path("/tmp") / f"wrpo-head-{uuid.uuid4().hex[:12]}"  # short: Ray's socket paths must fit 107 bytes
    dash = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    gen = ray_cli("get-auth-token", "--generate", env=env)
    assert gen.startswith("rc=0"), gen
    start = ray_cli("start", "--head", f"--port={free_port()}", f"--dashboard-port={dash}",
                 "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
                 env=env)
    try:
        assert start.startswith("rc=0"), start
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _engine(n: int) -> dict:
    return {"dtype": "float32",
            "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20, "max_model_len": 256, "enforce_eager": True},
            "sampling": {"n": n, "max_tokens": 8}, "pool": {"num_cpus": 0.5}}


def _pipeline_config(tmp_path: Path) -> Path:
    prompts, held_out = tmp_path / "prompts.jsonl", tmp_path / "eval.jsonl"
    write_jsonl(make_examples(16, seed=5), prompts)
    write_jsonl(make_examples(4, seed=6), held_out)
    trainer = {"num_workers": 2, "micro_batch_size": 1, "learning_rate": 1e-3, "max_length": 64,
               "max_prompt_length": 32}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "run_name": "submit-test",
        "run": {"output_dir": str(tmp_path / "out")},
        "generate": {"output_dir": str(tmp_path / "unused"), "data": {"prompts": str(prompts)},
                     "sources": [{"name": "llama-src", "path": "toy://llama", **_engine(2)}],
                     "reward": {"verifier": "wrpo_ray.toy.task:verify"},
                     # untrained models seldom stop before max_tokens; their cut samples must stay selectable
                     "keep_truncated": True},
        "target": {"name": "target", "path": "toy://target", **_engine(3)},
        "sft": trainer,
        "train": {**trainer, "loss": {"beta": 0.5, "alpha": 0.5}},
        "eval": {"prompts": str(held_out), "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 8},
                 "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20, "max_model_len": 256, "enforce_eager": True},
                 "pool": {"num_cpus": 0.5}, "bootstrap_resamples": 100},
    }))
    return config


def test_tiny_pipeline_job_succeeds(head, tmp_path):
    """The whole pipeline as one Ray job: every stage runs, persists its summary, and evaluation reports."""
    address, env = head
    config = _pipeline_config(tmp_path)
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--no-wait",
         "--", "python", "-m", "jobs.run", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    job_id = next(line.split("'")[1] for line in submit.stdout.splitlines() if "submitted successfully" in line)

    status = ""
    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline:
        status = ray_cli("job", "status", "--address", address, job_id, env=env).lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(10)
    logs = ray_cli("job", "logs", "--address", address, job_id, env=env)
    assert "succeeded" in status, logs[-6000:]
    assert "Table 2" in logs and "Target-SFT-WRPO" in logs

    # a console a person can read: each logged step once, no engine start-up logs, no report dumps
    out = tmp_path / "out"
    logged = sum(len((out / stage / "metrics.jsonl").read_text().splitlines()) for stage in ("sft", "wrpo"))
    assert sum(line.startswith("step ") and " (epoch " in line for line in logs.splitlines()) == logged
    for noise in ("TrainingReport(", "Loading safetensors checkpoint shards", "(EngineCore", "Execution plan"):
        assert noise not in logs, noise
    assert "full logs: " in logs and (out / "logs" / "driver.log").stat().st_size > 0

    out = tmp_path / "out"
    pipeline = json.loads((out / "pipeline.json").read_text())
    assert set(pipeline["stages"]) == {"sources", "sft", "target", "preference", "wrpo", "eval"}
    stages = pipeline["stages"]
    assert stages["sources"]["prompts"]["out"] == 16
    assert stages["sft"]["rows"]["examples"] + stages["sft"]["rows"]["outside_split"] == 16
    assert stages["target"]["prompts"]["in"] == stages["sft"]["rows"]["outside_split"]
    pref = stages["preference"]
    assert pref["quadruples"] + pref["quarantined"] == stages["target"]["prompts"]["out"]
    assert Path(stages["wrpo"]["model_dir"], "model.safetensors").is_file()
    assert set(stages["eval"]["reports"]) == {"Target", "Target-SFT", "Target-SFT-WRPO"}
    assert all(r["num_prompts"] == 4 for r in stages["eval"]["reports"].values())
    assert (out / "eval" / "reward_dynamics_Target-SFT-WRPO.png").stat().st_size > 0
    for name in stages:
        assert (out / name / "stage.json").is_file()

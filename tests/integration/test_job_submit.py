"""The real submission path: a local head started with `ray start`, the tiny job sent with `ray job submit`."""

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from tests.integration.process_tree import MARK, census, marked, named, new_mark
from tests.integration.ray_heads import BIN, free_port, ray_cli, stop_head
from wrpo_ray.generate.commit import committed_files
from wrpo_ray.runtime import RAY_NODE_ENV
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
    port = free_port()
    # started as cluster/ starts every node: with per-worker process groups
    start = ray_cli("start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                 "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
                 env={**env, **RAY_NODE_ENV})
    try:
        assert start.startswith("rc=0"), start
        yield f"http://127.0.0.1:{dash}", {**env, "WRPO_TEST_GCS": f"127.0.0.1:{port}"}
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


def _submit(address: str, env: dict, *command: str, options: tuple[str, ...] = ()) -> str:
    """`ray job submit --no-wait [options] -- command`; returns the submission id."""
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait", *options, "--", *command],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    return next(line.split("'")[1] for line in submit.stdout.splitlines() if "submitted successfully" in line)


def _marked_by(mark: str) -> tuple[str, ...]:
    """Submit options that put `mark` in the environment of every process of the job (its runtime env)."""
    return ("--runtime-env-json", json.dumps({"env_vars": {MARK: mark}}))


def _wait_status(address: str, env: dict, job_id: str, timeout: float, poll: float = 2) -> str:
    """The job's status once it has ended (succeeded, failed, stopped), or the last seen at `timeout`."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = ray_cli("job", "status", "--address", address, job_id, env=env).lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(poll)
    return status


def test_tiny_pipeline_job_succeeds(head, tmp_path):
    """The whole pipeline as one Ray job: every stage runs, persists its summary, and evaluation reports."""
    address, env = head
    config = _pipeline_config(tmp_path)
    job_id = _submit(address, env, "python", "-m", "jobs.run", "--config", str(config),
                     options=("--working-dir", str(REPO)))
    status = _wait_status(address, env, job_id, 1500, poll=10)
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


RAY_DATA_SINGLETONS = ("_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker")
"""Ray Data's cluster-wide actors: detached, created by the first job that needs them (so they carry its
runtime env), reused by every later one, reserving nothing. They are not the job's to end."""


def _singletons(procs) -> dict[str, int]:
    found = {}
    for p in procs:
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        for name in RAY_DATA_SINGLETONS:
            if title.startswith(f"ray::{name}"):
                found[name] = p.pid
    return found


def _cpus_in_use(env: dict) -> float:
    """CPUs held on the head, from `ray status` (its `used/total CPU` line)."""
    import re

    out = ray_cli("status", "--address", env["WRPO_TEST_GCS"], env=env)
    m = re.search(r"([\d.]+)/([\d.]+) CPU", out)
    assert m, out
    return float(m.group(1))


def _generate_config(tmp_path: Path) -> Path:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    rows = make_examples(2400, seed=21)
    for i in range(8):  # a block per file: each commits on its own, so the stop finds work committed
        write_jsonl(rows[i * 300:(i + 1) * 300], prompts / f"part-{i}.jsonl")
    source = {"name": "llama-src", "path": "toy://llama", **_engine(2)}
    source["sampling"] = {"n": 2, "temperature": 0.8, "max_tokens": 48}
    source["pool"] = {"num_cpus": 0.5, "batch_size": 32}
    config = tmp_path / "generate.yaml"
    config.write_text(yaml.safe_dump({"generate": {
        "output_dir": str(tmp_path / "out"), "data": {"prompts": str(prompts)}, "sources": [source],
        "reward": {"verifier": "wrpo_ray.toy.task:verify"}, "keep_truncated": True}}))
    return config


def test_job_stop_frees_everything_and_resubmission_resumes(head, tmp_path):
    """`ray job stop` mid-generation: the job's actors and engines end, the CPUs they held are free, committed
    batches stay; the same job submitted again reuses them and generates only the rest."""
    address, env = head
    config = _generate_config(tmp_path)
    command = ("python", "-m", "wrpo_ray.cli", "generate", "--config", str(config))
    scored = tmp_path / "out" / "scored"
    mark = new_mark()
    job_id = _submit(address, env, *command, options=_marked_by(mark))
    deadline = time.monotonic() + 300
    while not (named(marked(mark), "VLLMGenerator") and committed_files(scored)):
        assert time.monotonic() < deadline, ray_cli("job", "logs", "--address", address, job_id, env=env)[-4000:]
        time.sleep(0.5)
    before, kept = census(marked(mark)), len(committed_files(scored))
    t0 = time.monotonic()
    stop = ray_cli("job", "stop", "--address", address, job_id, env=env)
    assert stop.startswith("rc=0"), stop
    assert "stopped" in _wait_status(address, env, job_id, 60)
    stopped_s = time.monotonic() - t0
    singletons = _singletons(psutil.process_iter())  # on this head, whichever job started them
    left = [p for p in marked(mark) if p.pid not in singletons.values()]
    while left and time.monotonic() - t0 < 30:
        time.sleep(0.25)
        left = [p for p in marked(mark) if p.pid not in singletons.values()]
    gone_s = time.monotonic() - t0
    print(f"\nSTOP ray job stop: job_stopped_s={stopped_s:.2f} all_gone_s={gone_s:.2f} "
          f"before={json.dumps(before, sort_keys=True)} after={json.dumps(census(left), sort_keys=True)} "
          f"ray_data_singletons={len(singletons)}")
    assert not left, [" ".join(p.cmdline()) for p in left]
    # `ray status` shows the raylet's last resource report, which can trail the processes' exit by a few seconds
    in_use = _cpus_in_use(env)
    while in_use and time.monotonic() - t0 < 60:
        time.sleep(1)
        in_use = _cpus_in_use(env)
    print(f"STOP ray job stop: cpus_free_s={time.monotonic() - t0:.2f}")
    assert in_use == 0.0
    logs = ray_cli("job", "logs", "--address", address, job_id, env=env)
    assert "stopped by SIGTERM" in logs and "wrpo-ray generate --config" in logs, logs[-3000:]
    assert len(committed_files(scored)) >= kept

    mark = new_mark()
    job_id = _submit(address, env, *command, options=_marked_by(mark))
    status = _wait_status(address, env, job_id, 600)
    logs = ray_cli("job", "logs", "--address", address, job_id, env=env)
    assert "succeeded" in status, logs[-4000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    resume = summary["resume"]
    assert resume["attempt"] == 1 and resume["pairs_reused"] >= kept * 300
    assert resume["pairs_reused"] + resume["pairs_generated"] == 2400
    assert summary["prompts"]["out"] == 2400
    deadline = time.monotonic() + 30
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not marked(mark), census(marked(mark))
    # the second job used the singletons already there, and made none of its own
    assert _singletons(psutil.process_iter()) == singletons

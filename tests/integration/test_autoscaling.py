"""Autoscaling on Ray's fake multi-node provider: a head with no worker and no CPU, a generation run whose
spot-marked pool makes the autoscaler add "spot" nodes, and their removal once idle.

The fake provider starts real raylets on this machine, so the vLLM engine, the verifier and Ray Data's tasks
run on the added nodes exactly as they would on spot instances. Its nodes and monitor connect to the GCS on
port 6379, whatever `--port` says (see STACK: multi-node Ray on one machine).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.integration.ray_heads import BIN, free_port, ray_cli, stop_head
from wrpo_ray.placement import MARKER_UNITS, SPOT
from wrpo_ray.toy.task import make_examples, write_jsonl

pytestmark = pytest.mark.integration

GCS_PORT = 6379
SPOT_NODE = "gen-spot"
IDLE_MINUTES = 0.2


def _autoscaler_config() -> dict:
    empty_commands = {key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                                          "worker_setup_commands", "head_start_ray_commands",
                                          "worker_start_ray_commands", "cluster_synced_files")}
    return {
        "cluster_name": "wrpo-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_MINUTES,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {},
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            SPOT_NODE: {"resources": {"CPU": 2, SPOT: MARKER_UNITS}, "node_config": {}, "min_workers": 0,
                        "max_workers": 2},
        },
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **empty_commands,
    }


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    import ray

    ray.shutdown()
    _skip_if_taken(GCS_PORT)
    temp = Path("/tmp") / f"wrpo-fake-{uuid.uuid4().hex[:12]}"
    config = tmp_path_factory.mktemp("autoscaler") / "cluster.yaml"
    config.write_text(yaml.safe_dump(_autoscaler_config()))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_FAKE_CLUSTER": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    assert ray_cli("get-auth-token", "--generate", env=env).startswith("rc=0")
    start = ray_cli("start", "--head", f"--port={GCS_PORT}", f"--autoscaling-config={config}", "--num-cpus=0",
                    f"--dashboard-port={free_port()}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}",
                    "--disable-usage-stats", env=env)
    try:
        assert start.startswith("rc=0"), start
        yield f"127.0.0.1:{GCS_PORT}", env, temp
    finally:
        stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _skip_if_taken(port: int) -> None:
    """Skip, with the reason, when another Ray on this machine holds the fake provider's fixed GCS port."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            pytest.skip(f"port {port} is in use: the fake autoscaling cluster needs its GCS there")


def _alive_nodes(address: str, env: dict) -> list[dict]:
    script = textwrap.dedent(f"""
        import json, ray
        ray.init(address={address!r}, logging_level="ERROR")
        print("NODES" + json.dumps([n["Resources"] for n in ray.nodes() if n["Alive"]]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("NODES")), None)
    assert line is not None, proc.stderr[-2000:]
    return json.loads(line[len("NODES"):])


def _generate_config(tmp_path: Path) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(make_examples(8, seed=11), prompts)
    config = tmp_path / "gen.yaml"
    config.write_text(yaml.safe_dump({"generate": {
        "output_dir": str(tmp_path / "out"), "data": {"prompts": str(prompts)},
        "sources": [{"name": "llama-src", "path": "toy://llama", "dtype": "float32",
                     "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20, "max_model_len": 256,
                                       "enforce_eager": True},
                     "sampling": {"n": 2, "max_tokens": 8},
                     "pool": {"concurrency": [1, 2], "num_cpus": 1, "resources": {SPOT: 1}}}],
        "reward": {"verifier": "wrpo_ray.toy.task:verify"},
        "keep_truncated": True,
    }}))
    return config


def test_spot_demand_adds_nodes_that_go_away_when_idle(fake_cluster, tmp_path):
    address, env, temp = fake_cluster
    assert [n.get(SPOT, 0) for n in _alive_nodes(address, env)] == [0]  # the head alone, no spot capacity

    t0 = time.monotonic()
    proc = subprocess.run([str(BIN / "wrpo-ray"), "generate", "--config", str(_generate_config(tmp_path))],
                          env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seconds = time.monotonic() - t0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["prompts"]["out"] == 8 and summary["samples"]["out"] == 16

    launches = [line for line in _monitor_events(temp) if "Adding" in line and SPOT_NODE in line]
    assert launches, "the autoscaler added no spot node"

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        nodes = _alive_nodes(address, env)
        if not any(n.get(SPOT, 0) for n in nodes):
            break
        time.sleep(10)
    assert not any(n.get(SPOT, 0) for n in nodes), f"spot nodes still up after the idle time-out: {nodes}"
    removals = [line for line in _monitor_events(temp) if "Removing" in line and SPOT_NODE in line]
    print(f"\ngeneration on autoscaled spot nodes: {seconds:.0f} s; autoscaler: {launches + removals}")


def _monitor_events(temp: Path) -> list[str]:
    """The autoscaler's event summaries (`Adding 1 node(s) of type ...`, `Removing ...`), in order, once each."""
    logs = sorted(temp.glob("session_2*/logs/monitor.log"))
    lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
    return [line.split(":event_summary:", 1)[1] for line in lines if ":event_summary:" in line]

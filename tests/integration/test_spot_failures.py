"""What spot instances do to the generation stage, on one local multi-node Ray cluster shared by the module.

The head runs the job drivers and no generation; two workers carry the spot marker, so a source pool lands
on either and Ray Data restarts its actor on another one when its node is lost (a replacement node joins
after each loss, as the autoscaler would add one). Every stage runs as a Ray job (`python -m
jobs.generate`), as users submit it:

- one job loses the node of its source pool mid-generation, then the node the pool restarted on, this one
  after a preemption notice (a drain with Ray's preemption reason and a deadline): the job completes,
  every prompt is selected once, no sample is there twice, and nothing of the job starts on the draining
  node;
- a job's driver is killed mid-generation and the job submitted again: only the pairs that no committed
  batch holds are generated, and the selections are those of a run never interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from tests.integration.ray_heads import free_port, ray_cli, stop_head
from wrpo_ray.generate.commit import attempt_of, committed_files, complete_attempts
from wrpo_ray.placement import MARKER_UNITS, SPOT
from wrpo_ray.toy.task import make_examples

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NUM_PROMPTS = 48
SEED = 3
VALID_IDS = frozenset(r["prompt_id"] for r in make_examples(NUM_PROMPTS, seed=SEED))
BAD_LINES = ['{"prompt_id": "broken", "prompt": ', json.dumps({"prompt_id": "empty", "prompt": ""})]
GENERATOR = "VLLMGenerator"
"""The class of the source pools' actors: Ray Data names their actors and tasks after it."""
RETRIES_KEY = "retries"
"""The summary's block of what Ray retried (`wrpo_ray.generate.retries.count_retries`)."""
OBJECT_STORE = 100 * 2**20
DRAIN_DEADLINE_S = 2
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000, "health_check_failure_threshold": 3}
"""The GCS declares a silent node dead after ~3 s instead of Ray's default ~15 s: a lost node costs less."""


# --- the cluster -------------------------------------------------------------------------------------------


@dataclass
class SpotCluster:
    """A `ray.cluster_utils.Cluster`: a head with the dashboard (job submission), and spot-marked workers."""

    cluster: Any
    dashboard: str
    nodes: dict[str, Any] = field(default_factory=dict)

    def add_spot_node(self) -> str:
        node = self.cluster.add_node(num_cpus=1, resources={SPOT: MARKER_UNITS}, object_store_memory=OBJECT_STORE)
        self.nodes[node.node_id] = node
        return node.node_id

    def lose(self, node_id: str) -> None:
        """Every process of the node dies at once, as when a spot instance is reclaimed; a new node joins."""
        self.cluster.remove_node(self.nodes.pop(node_id), allow_graceful=False)
        self.add_spot_node()


@contextmanager
def _auth_token_mode() -> Iterator[None]:
    """Token authentication for the cluster and this process, as on a real cluster.

    Ray read `RAY_AUTH_MODE` when this process first imported it, so its settings are read again here.
    """
    import ray

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.pop("RAY_ADDRESS", None)
    assert ray_cli("get-auth-token", "--generate", env=dict(os.environ)).startswith("rc=0")
    ray._raylet.Config.initialize("")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        ray._raylet.Config.initialize("")


@contextmanager
def _address_file_kept() -> Iterator[Callable[[], None]]:
    """Keeps the machine's "current cluster" file as it was: `Cluster` writes its head's address there (and
    deletes the file at shutdown), which would send any plain `ray.init()` on this machine to this cluster."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    before = path.read_text() if path.exists() else None

    def restore() -> None:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)

    try:
        yield restore
    finally:
        restore()


@pytest.fixture(scope="module")
def cluster() -> Iterator[SpotCluster]:
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    temp = Path("/tmp") / f"wrpo-spot-{uuid.uuid4().hex[:12]}"  # short: Ray's socket paths must fit 107 bytes
    dash = free_port()
    c = None
    with _auth_token_mode(), _address_file_kept() as restore_address_file:
        try:
            c = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "object_store_memory": OBJECT_STORE, "temp_dir": str(temp), "include_dashboard": True,
                "dashboard_host": "127.0.0.1", "dashboard_port": dash, "_system_config": HEALTH_CHECKS})
            restore_address_file()
            spot = SpotCluster(c, f"http://127.0.0.1:{dash}")
            for _ in range(2):
                spot.add_spot_node()
            ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
            yield spot
        finally:
            ray.shutdown()
            if c is not None:
                c.shutdown()
            stop_head(temp)  # whatever a failed start left behind
            shutil.rmtree(temp, ignore_errors=True)


# --- configs and jobs --------------------------------------------------------------------------------------


def _source(name: str, toy: str, n: int, max_tokens: int) -> dict:
    return {"name": name, "path": f"toy://{toy}", "dtype": "float32",
            "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20, "max_model_len": 256, "enforce_eager": True},
            "sampling": {"n": n, "max_tokens": max_tokens},
            "pool": {"concurrency": 1, "num_cpus": 0.5, "batch_size": 2, "resources": {SPOT: 1}}}


def _config(tmp: Path, sources: list[dict], out: str = "out") -> Path:
    prompts = tmp / "prompts.jsonl"
    if not prompts.exists():
        lines = [json.dumps(r) for r in make_examples(NUM_PROMPTS, seed=SEED)] + BAD_LINES
        prompts.write_text("\n".join(lines) + "\n")
    config = tmp / f"{out}.yaml"
    config.write_text(yaml.safe_dump({"generate": {
        "seed": 0, "output_dir": str(tmp / out), "data": {"prompts": str(prompts)}, "sources": sources,
        "reward": {"verifier": "wrpo_ray.toy.task:verify"},
        # untrained models seldom stop before max_tokens: their cut samples stay selectable
        "keep_truncated": True}}))
    return config


def wait_for(check: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] | None = None,
             every: float = 0.5) -> Any:
    """`check()`'s first truthy value, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{detail()}" if detail else ""))


ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Job:
    client: Any
    submission_id: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def info(self) -> Any:
        return self.client.get_job_info(self.submission_id)

    def job_id(self) -> str:
        """Ray's hex id of the job, known once its driver has connected."""
        def connected() -> str | None:
            info = self.info()
            assert info.job_id or str(info.status.value) not in ENDED, self.logs()
            return info.job_id

        return wait_for(connected, 120, "the job's driver to connect", self.logs)

    def logs(self) -> str:
        return self.client.get_job_logs(self.submission_id)[-6000:]

    def wait_done(self, timeout: float = 300) -> str:
        def ended() -> str | None:
            status = str(self.info().status.value)
            return status if status in ENDED else None

        status = wait_for(ended, timeout, "the job to end", self.logs)
        self.ended = time.monotonic()
        return status

    def seconds(self) -> int:
        return round((self.ended or time.monotonic()) - self.started)


def submit(spot: SpotCluster, config: Path) -> Job:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(spot.dashboard)
    sid = client.submit_job(entrypoint=f"{sys.executable} -m jobs.generate --config {config}",
                            runtime_env={"working_dir": str(REPO)})
    return Job(client, sid)


# --- the state API -----------------------------------------------------------------------------------------


def generating_node(job_id: str, not_on: str | None = None) -> str | None:
    """The node of a source pool's actor of the job while it runs a generation task (elsewhere than
    `not_on`), else None."""
    from ray.util.state import list_actors, list_tasks

    actors = list_actors(filters=[("job_id", "=", job_id), ("state", "=", "ALIVE")])
    for actor in actors:
        if GENERATOR not in actor.class_name or actor.node_id == not_on:
            continue
        running = list_tasks(filters=[("actor_id", "=", actor.actor_id), ("state", "=", "RUNNING")])
        if any(t.type == "ACTOR_TASK" for t in running):
            return actor.node_id
    return None


def started_on(job_id: str, node_id: str, since_ms: int) -> list[str]:
    """Tasks of the job (actor creations and restarts included) that started on the node after `since_ms`."""
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("job_id", "=", job_id), ("node_id", "=", node_id)], detail=True, limit=10_000,
                       raise_on_missing_output=False)
    return [f"{t.name} (attempt {t.attempt_number})" for t in tasks if (t.start_time_ms or 0) > since_ms]


def actors_on(job_id: str, node_id: str) -> set[str]:
    from ray.util.state import list_actors

    alive = list_actors(filters=[("job_id", "=", job_id), ("node_id", "=", node_id), ("state", "=", "ALIVE")])
    return {a.actor_id for a in alive}


def live_actors(job_id: str) -> int:
    from ray.util.state import list_actors

    return len(list_actors(filters=[("job_id", "=", job_id), ("state", "!=", "DEAD")]))


def drain_for_preemption(gcs_address: str, node_id: str, deadline_s: int) -> int:
    """Ray's drain with the preemption reason and a deadline, as a cloud's notice triggers it; returns when
    it was sent (ms since the epoch) once the node is draining."""
    import ray
    from ray.core.generated import autoscaler_pb2

    sent_ms = time.time_ns() // 1_000_000
    accepted, why = ray._raylet.GcsClient(address=gcs_address).drain_node(
        node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), "spot preemption notice",
        sent_ms + deadline_s * 1000)
    assert accepted, why
    wait_for(lambda: node_id in ray._private.state.state.get_draining_nodes(), 10, "the node to be draining")
    return sent_ms


def committed_rows(scored: Path) -> dict[str, list[dict]]:
    """Per prompt, the key columns and responses of its committed samples, each with its attempt."""
    rows_by_prompt: dict[str, list[dict]] = {}
    for path in committed_files(scored):
        columns = ["prompt_id", "model", "sample_idx", "error", "response"]
        for r in pq.read_table(path, columns=columns).to_pylist():
            rows_by_prompt.setdefault(r["prompt_id"], []).append({**r, "attempt": attempt_of(path)})
    return rows_by_prompt


def complete_pairs(scored: Path, samples_per_model: dict[str, int]) -> dict[tuple[str, str, int], str]:
    """The samples of the (prompt, model) pairs that committed batches hold whole, as the stage's resume
    decides them: their responses by (prompt, model, sample)."""
    out = {}
    for rows in committed_rows(scored).values():
        complete = complete_attempts(rows, samples_per_model)
        for r in rows:
            if complete.get(r["model"]) == r["attempt"]:
                out[(r["prompt_id"], r["model"], r["sample_idx"])] = r["response"]
    return out


def pairs(samples: dict[tuple[str, str, int], Any]) -> set[tuple[str, str]]:
    return {(pid, model) for pid, model, _ in samples}


# --- the outputs -------------------------------------------------------------------------------------------


def outputs(out: Path) -> tuple[dict, list[dict], list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    return summary, pq.read_table(out / "samples").to_pylist(), pq.read_table(out / "selections").to_pylist()


def check_complete(out: Path, samples_per_prompt: int) -> tuple[dict, list[dict], list[dict]]:
    """Every valid prompt selected once, every (prompt, model, sample) once; the summary agrees."""
    summary, samples, selections = outputs(out)
    ids = [s["prompt_id"] for s in selections]
    assert len(ids) == len(set(ids)) and set(ids) == VALID_IDS
    keys = [(s["prompt_id"], s["model"], s["sample_idx"]) for s in samples]
    assert len(keys) == len(set(keys)) == NUM_PROMPTS * samples_per_prompt
    assert summary["prompts"]["in"] == NUM_PROMPTS + len(BAD_LINES)
    assert summary["prompts"]["valid"] == summary["prompts"]["out"] == NUM_PROMPTS
    return summary, samples, selections


def check_summary_retries(summary: dict, counted: dict[str, int], at_least: int) -> None:
    """The job's summary counts the actor restarts and task retries the state API shows once it has ended."""
    mine = summary[RETRIES_KEY]
    assert at_least <= mine["actor_restarts"] <= counted["actor_restarts"]
    assert mine["actor_restarts_preempted"] <= counted["actor_restarts_preempted"]
    assert mine["task_retries"] <= counted["task_retries"]


# --- a job that loses two spot nodes -----------------------------------------------------------------------

NODE_SOURCES = [_source("llama-src", "llama", 2, 128)]
"""One source, its generation long enough (~10 s here) to lose a node in the middle of it twice."""


@dataclass
class Losses:
    job: Job
    job_id: str
    out: Path
    lost: str
    drained: str
    drained_ms: int
    actors_arrived_while_draining: set[str]
    generating_at_loss: bool
    status: str


@pytest.fixture(scope="module")
def losses(cluster, tmp_path_factory) -> Losses:
    """The node of the source pool is lost mid-generation without notice; the pool's actor restarts on
    another spot node; that node gets a preemption notice mid-generation, and is lost at its deadline."""
    tmp = tmp_path_factory.mktemp("losses")
    job = submit(cluster, _config(tmp, NODE_SOURCES))
    job_id = job.job_id()
    lost = wait_for(lambda: generating_node(job_id), 240, "the source pool generating", job.logs)
    cluster.lose(lost)
    drained = wait_for(lambda: generating_node(job_id, not_on=lost), 240, "the restarted pool generating", job.logs)
    there_before = actors_on(job_id, drained)
    drained_ms = drain_for_preemption(cluster.cluster.address, drained, DRAIN_DEADLINE_S)
    arrived: set[str] = set()
    while time.time() < drained_ms / 1000 + DRAIN_DEADLINE_S:
        arrived |= actors_on(job_id, drained) - there_before
        time.sleep(0.2)
    generating = generating_node(job_id) == drained
    cluster.lose(drained)
    return Losses(job, job_id, tmp / "out", lost, drained, drained_ms, arrived, generating, job.wait_done())


def test_nodes_lost_mid_generation(losses):
    """Both losses cost a restart of the pool's actor and retries of its work, and the job completes:
    every valid prompt selected once, no (prompt, model, sample) twice."""
    from wrpo_ray.generate.retries import count_retries

    assert losses.status == "SUCCEEDED", losses.job.logs()
    summary, _, _ = check_complete(losses.out, 2)
    counted = count_retries(losses.job_id)
    assert losses.generating_at_loss, "the generation ended before the drained node was lost: make it longer"
    assert counted["actor_restarts"] >= 2 and counted["actor_restarts_preempted"] >= 1
    assert counted["task_retries"] >= 1
    check_summary_retries(summary, counted, at_least=2)
    print(f"\nnodes lost: job {losses.job.seconds()} s; prompts {summary['prompts']}; resume {summary['resume']}; "
          f"state API {counted}; summary {summary[RETRIES_KEY]}")


def test_no_work_placed_on_a_draining_node(losses):
    """Once the preemption notice drains a node, nothing of the job starts there: no task, no actor."""
    assert losses.status == "SUCCEEDED", losses.job.logs()
    assert started_on(losses.job_id, losses.drained, losses.drained_ms) == []
    assert losses.actors_arrived_while_draining == set()


# --- a job whose driver is lost ----------------------------------------------------------------------------

DRIVER_SOURCES = [_source("qwen2-src", "qwen2", 1, 4), *NODE_SOURCES]
"""A quick source and a slow one: one's batches are committed while the other is still generating."""


def test_driver_lost_then_resubmitted(cluster, tmp_path):
    """The job's driver is killed mid-generation; submitted again, the job generates only the pairs that no
    committed batch holds, and selects the prompts a run never interrupted selects."""
    config = _config(tmp_path, DRIVER_SOURCES)
    samples_per_model = {s["name"]: s["sampling"]["n"] for s in DRIVER_SOURCES}
    scored = tmp_path / "out" / "scored"
    total = NUM_PROMPTS * len(DRIVER_SOURCES)

    first = submit(cluster, config)
    first_id = first.job_id()
    wait_for(lambda: 0 < len(pairs(complete_pairs(scored, samples_per_model))) < total
             and generating_node(first_id), 300, "a committed batch while a source pool still generates", first.logs)
    os.kill(int(first.info().driver_info.pid), signal.SIGKILL)
    assert first.wait_done(60) == "FAILED"
    wait_for(lambda: live_actors(first_id) == 0, 60, "the dead driver's actors to go")
    kept = complete_pairs(scored, samples_per_model)
    kept_pairs = pairs(kept)
    assert 0 < len(kept_pairs) < total, "the driver was killed before the first commit or after the last"

    second = submit(cluster, config)
    assert second.wait_done() == "SUCCEEDED", second.logs()
    summary, samples, selections = check_complete(tmp_path / "out", sum(samples_per_model.values()))
    resume = summary["resume"]
    assert resume["attempt"] == 1 and resume["pairs_incomplete"] == 0
    assert resume["pairs_reused"] == len(kept_pairs)
    assert resume["pairs_generated"] == total - len(kept_pairs)
    # the reused pairs' samples are those the killed job committed, not new ones
    reused = {(s["prompt_id"], s["model"], s["sample_idx"]): s["response"] for s in samples
              if (s["prompt_id"], s["model"]) in kept_pairs}
    assert reused == kept

    reference = submit(cluster, _config(tmp_path, DRIVER_SOURCES, out="reference"))
    assert reference.wait_done() == "SUCCEEDED", reference.logs()
    _, _, never_interrupted = check_complete(tmp_path / "reference", sum(samples_per_model.values()))
    assert {s["prompt_id"] for s in selections} == {s["prompt_id"] for s in never_interrupted}
    print(f"\ndriver lost: first job {first.seconds()} s, resubmitted {second.seconds()} s, reference "
          f"{reference.seconds()} s; prompts {summary['prompts']}; resume {resume}; pairs committed before the kill "
          f"{len(kept_pairs)}; "
          f"summary {summary[RETRIES_KEY]}")

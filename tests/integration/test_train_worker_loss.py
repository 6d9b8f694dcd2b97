"""A Ray Train worker process killed mid-run: Ray Train restarts the worker group from the latest checkpoint.

WRPO on 2 CPU workers with DeepSpeed ZeRO-3 on the tiny target model, a checkpoint every step. Once the run
has logged step KILL_AT, one worker of this run (found by the state API among this driver's job's
RayTrainWorker actors) gets SIGKILL. The run must finish in the same `fit`, its metrics hold every step once,
each with the alpha of its step, and the summary counts the restart.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from wrpo_ray.config import parse_config
from wrpo_ray.toy.task import make_preference_rows
from wrpo_ray.train.losses import alpha_at

pytestmark = pytest.mark.integration

ROWS = 16
ALPHA = 0.5
EPOCHS = 2
STEPS_PER_EPOCH = ROWS // 4
TOTAL = EPOCHS * STEPS_PER_EPOCH
KILL_AT = 3


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pref") / "pref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_preference_rows(ROWS, seed=3)))
    return path


def _cfg(data_file: Path, out: Path):
    return parse_config({"train": {
        "policy": {"name": "target", "path": "toy://target", "dtype": "float32"},
        "data": str(data_file), "output_dir": str(out),
        "num_workers": 2, "zero_stage": 3, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
        "learning_rate": 2e-3, "warmup_ratio": 0.0, "max_length": 64, "max_prompt_length": 32,
        "epochs": EPOCHS, "save_steps": 1, "max_failures": 1,
        "loss": {"objective": "wrpo", "inner": "dpo", "beta": 0.5, "alpha": ALPHA},
    }}).train


def _logged(metrics_file: Path) -> dict[int, dict]:
    if not metrics_file.is_file():
        return {}
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines(keepends=True) if line.endswith("\n")]
    return {m["step"]: m for m in lines}


def _train_workers_of_this_job() -> list:
    import ray
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    return [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"),
                                            ("job_id", "=", job)], raise_on_missing_output=False)
            if a.pid]


class WorkerKiller(threading.Thread):
    """Waits until the run has logged step `at`, then SIGKILLs one training worker of this driver's job."""

    def __init__(self, metrics_file: Path, at: int, timeout_s: float = 900) -> None:
        super().__init__(name="worker-killer", daemon=True)
        self.metrics_file, self.at, self.timeout_s = metrics_file, at, timeout_s
        self.done = threading.Event()
        self.killed_pid: int | None = None
        self.logged_at_kill: dict[int, dict] = {}
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.done.wait(0.2):
            if time.monotonic() > deadline:
                self.error = f"step {self.at} not logged in {self.timeout_s} s"
                return
            if max(_logged(self.metrics_file), default=0) >= self.at:
                self._kill_one()
                return
        self.error = f"the run ended before step {self.at} was logged"

    def _kill_one(self) -> None:
        workers = sorted(_train_workers_of_this_job(), key=lambda a: a.pid)
        if len(workers) != 2:
            self.error = f"expected 2 live training workers, found {[(a.actor_id, a.pid) for a in workers]}"
            return
        self.logged_at_kill = _logged(self.metrics_file)
        self.killed_pid = workers[-1].pid
        os.kill(self.killed_pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def killed_run(data_file, tmp_path_factory):
    from wrpo_ray.runtime import ensure_ray
    from wrpo_ray.train.run import run_training

    ensure_ray()
    out = tmp_path_factory.mktemp("worker-loss")
    killer = WorkerKiller(out / "metrics.jsonl", KILL_AT)
    killer.start()
    try:
        summary = run_training(_cfg(data_file, out), "preference")
    finally:
        killer.done.set()
        killer.join()
    assert killer.error is None, killer.error
    return out, summary, killer


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_run_completes_after_losing_a_worker(killed_run):
    out, summary, killer = killed_run
    assert killer.killed_pid is not None and max(killer.logged_at_kill) >= KILL_AT
    assert summary["steps"] == {"total": TOTAL, "completed": TOTAL, "per_epoch": STEPS_PER_EPOCH}
    assert summary["model_dir"] and (Path(summary["model_dir"]) / "model.safetensors").is_file()


def test_the_summary_counts_the_restart_and_where_it_resumed(killed_run):
    out, summary, killer = killed_run
    assert summary["restarts"] == 1
    (resumed,) = summary["restarted_from_steps"]
    assert 1 <= resumed <= max(killer.logged_at_kill)
    attempts = [json.loads(line) for line in (out / "checkpoints" / "attempts.jsonl").read_text().splitlines()]
    assert [a["step"] for a in attempts] == [0, resumed]


def test_metrics_hold_every_step_once_with_the_alpha_of_its_step(killed_run):
    out, summary, _ = killed_run
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, TOTAL + 1))
    assert [m["epoch"] for m in metrics] == [(s - 1) // STEPS_PER_EPOCH + 1 for s in range(1, TOTAL + 1)]
    for m in metrics:
        assert m["alpha"] == pytest.approx(alpha_at(m["step"] - 1, TOTAL, ALPHA)), m["step"]
    (resumed,) = summary["restarted_from_steps"]
    first_after_restart = metrics[resumed]
    assert first_after_restart["step"] == resumed + 1
    assert first_after_restart["alpha"] == pytest.approx(alpha_at(resumed, TOTAL, ALPHA))


def test_steps_trained_again_after_the_restart_repeat_the_lost_attempt(killed_run):
    """Steps the killed attempt had logged after the checkpoint the run resumed from are trained again on the
    same weights, optimizer state and rows: the same losses. The lines up to that checkpoint are kept as they
    were."""
    out, summary, killer = killed_run
    (resumed,) = summary["restarted_from_steps"]
    final = {m["step"]: m for m in _metrics(out)}
    keys = ("loss", "rewards/margins", "logps/source", "logps/rejected", "alpha", "lr")
    for step, before in killer.logged_at_kill.items():
        if step <= resumed:
            assert final[step] == before, step
    redone = sorted(s for s in killer.logged_at_kill if s > resumed)
    if not redone:
        pytest.skip(f"the checkpoint of step {resumed}, the last one logged, was registered before the kill")
    for step in redone:
        for key in keys:
            assert final[step][key] == pytest.approx(killer.logged_at_kill[step][key], rel=1e-4, abs=1e-5), (step, key)

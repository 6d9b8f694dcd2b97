"""Pure pieces of the training recipe and worker: resources, DeepSpeed settings, schedule, failure handling
(no Ray cluster)."""

import dataclasses
import json

import pytest
import torch

from wrpo_ray.config import ConfigError, PreferenceTrainConfig, parse_config
from wrpo_ray.train.run import StepEcho, read_attempts, reference_resources
from wrpo_ray.train.worker import (
    LoopSpec,
    checkpoint_step,
    cosine_with_warmup,
    deepspeed_config,
    drop_metrics_after,
    start_attempt,
)


def _spec(**kw):
    base = {f.name: 1 for f in dataclasses.fields(LoopSpec)}
    return LoopSpec(**{**base, "max_grad_norm": 1.0, "learning_rate": 1e-3, "weight_decay": 0.0, **kw})


def test_reference_stage_reserves_what_a_training_worker_reserves():
    policy = {"name": "t", "path": "toy://target"}
    gpu = PreferenceTrainConfig(policy=policy, num_workers=8, use_gpu=True, cpus_per_worker=8,
                                resources_per_worker={"wrpo_train": 1})
    assert reference_resources(gpu) == {"actors": 8, "num_cpus": 8, "num_gpus": 1, "custom": {"wrpo_train": 1}}
    cpu = PreferenceTrainConfig(policy=policy, num_workers=2, cpus_per_worker=0.5)
    assert reference_resources(cpu) == {"actors": 2, "num_cpus": 0.5, "num_gpus": 0, "custom": {}}


@pytest.mark.parametrize("dtype,bf16,fp16", [(torch.float32, False, False), (torch.bfloat16, True, False),
                                              (torch.float16, False, True)])
def test_deepspeed_precision_follows_the_configured_dtype(dtype, bf16, fp16):
    cfg = deepspeed_config(_spec(zero_stage=3, micro_batch_size=2, gradient_accumulation_steps=4), dtype)
    assert cfg["bf16"]["enabled"] is bf16 and cfg["fp16"]["enabled"] is fp16
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 4


def test_cosine_with_warmup():
    f = cosine_with_warmup(10, 0.2)
    assert f(0) == pytest.approx(1 / 3) and f(1) == pytest.approx(2 / 3)
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.0)


def _train_settings(**kw) -> PreferenceTrainConfig:
    return parse_config({"train": {"policy": {"name": "t", "path": "toy://target"}, **kw}}).train


def test_tolerated_worker_failures_are_a_setting_passed_to_ray_train(tmp_path):
    from wrpo_ray.train.run import run_config

    assert _train_settings().max_failures == 3
    for n in (0, 5, -1):
        cfg = _train_settings(max_failures=n)
        assert run_config(cfg, tmp_path).failure_config.max_failures == n
    with pytest.raises(ConfigError, match="train.max_failures"):
        _train_settings(max_failures=-2)


def test_tolerated_failures_do_not_change_the_run_a_checkpoint_belongs_to():
    from wrpo_ray.train.run import _run_fingerprint

    cfg = _train_settings()
    assert _run_fingerprint(_spec(), cfg, []) == _run_fingerprint(_spec(), cfg.model_copy(update={"max_failures": 0}),
                                                                  [])


def _lines(steps, tag="") -> str:
    return "".join(json.dumps({"step": s, "loss": s + 0.5, "tag": tag}) + "\n" for s in steps)


def test_a_restarted_worker_group_drops_what_was_logged_after_its_checkpoint(tmp_path):
    metrics, attempts = tmp_path / "metrics.jsonl", tmp_path / "attempts.jsonl"
    metrics.write_text(_lines([1, 2, 3]) + '{"step": 4, "lo')    # the last line cut short by a killed writer
    inode = metrics.stat().st_ino
    spec = _spec(metrics_file=str(metrics), attempts_file=str(attempts))
    start_attempt(spec, 2)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert metrics.stat().st_ino != inode                           # replaced whole, never rewritten in place
    start_attempt(spec, 2)
    assert [a["step"] for a in read_attempts(spec)] == [2, 2]
    assert checkpoint_step(tmp_path / "run" / "step-000012") == 12


def test_step_echo_shows_every_line_once_across_a_restart(tmp_path):
    metrics, shown = tmp_path / "metrics.jsonl", []
    metrics.write_text(_lines([1]))
    echo = StepEcho(metrics, shown.append)                          # step 1 was logged before this run started
    with open(metrics, "a") as f:
        f.write(_lines([2, 3]) + '{"step": 4')
    echo.poll()
    assert [line.split()[1] for line in shown] == ["2", "3"]
    drop_metrics_after(metrics, 2)                                  # the worker group restarts from step 2
    with open(metrics, "a") as f:
        f.write(_lines([3, 4], tag="again"))
    echo.poll()
    echo.poll()
    assert [line.split()[1] for line in shown] == ["2", "3", "3", "4"]


def test_train_summary_counts_restarts():
    from wrpo_ray.cli import _format_restarts

    assert _format_restarts({"restarts": 0, "restarted_from_steps": []}) == "restarts: 0"
    assert _format_restarts({"restarts": 1, "restarted_from_steps": [2]}).startswith(
        "restarts: 1 (worker group lost, resumed from step 2")


def test_fit_time_is_split_into_the_phases_rank_0_recorded(tmp_path):
    from wrpo_ray.cli import format_stage_seconds
    from wrpo_ray.train.run import train_phases
    from wrpo_ray.train.worker import PhaseClock

    path = tmp_path / "timings.jsonl"
    earlier = {"group": "e", "started": 50.0, "ended": 60.0, "step": 4, "seconds": {"steps": 9.0}}
    lost = {"group": "l", "started": 103.0}  # a group that lost a worker writes its start only
    resumed_start = {"group": "r", "started": 115.0}
    resumed = {**resumed_start, "ended": 140.0, "step": 8, "seconds": {"deepspeed_init": 2.5, "steps": 20.0}}
    lines = [earlier, lost, resumed_start, resumed]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"group": "x", "star')
    phases = train_phases(path, fit_started=100.0, fit_ended=144.0)
    assert phases == {"worker_group_start": 3.0, "lost_groups": 12.0, "deepspeed_init": 2.5, "steps": 20.0,
                      "after_workers": 4.0}
    assert train_phases(tmp_path / "absent.jsonl", 0.0, 1.0) == {}

    clock = PhaseClock()
    out = tmp_path / "new.jsonl"
    clock.begin(out)
    clock.mark("load_model")
    clock.mark("steps")
    clock.mark("steps")
    clock.write(out, step=9)
    begun, record = (json.loads(line) for line in out.read_text().splitlines())
    assert begun["group"] == record["group"] and list(record["seconds"]) == ["load_model", "steps"]
    assert record["step"] == 9 and record["ended"] >= record["started"] == begun["started"]

    line = format_stage_seconds({"tokenize": 1.0, "train": 44.0, "train_phases": phases})
    assert line == ("seconds: tokenize 1.0, train 44.0 (train: worker_group_start 3.0, lost_groups 12.0, "
                    "deepspeed_init 2.5, steps 20.0, after_workers 4.0)")

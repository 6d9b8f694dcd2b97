import json
from pathlib import Path

import pyarrow as pa

from wrpo_ray.data.handoff import QUADRUPLE_OR_ASIDE, SIDED, quadruple_of, target_prompt_lines
from wrpo_ray.data.schemas import SELECTIONS
from wrpo_ray.pipeline import StageRunner
from wrpo_ray.train.preference_data import in_sft_split


def _sel(pid, best, reward, worst=None, reward_worst=None, model="m", candidates=2):
    return {"prompt_id": pid, "prompt": f"p{pid}", "messages": [{"role": "user", "content": f"p{pid}"}],
            "metadata": json.dumps({"answer": "a"}), "y_ws": best, "reward_ws": reward, "source_model": model,
            "source_sample_idx": 0, "num_tokens_ws": 1, "num_candidates": candidates, "rewards_by_model": "{}",
            "y_worst": worst or best, "reward_worst": reward if reward_worst is None else reward_worst,
            "worst_model": model}


def test_stage_runner_skips_only_matching_fingerprints(tmp_path):
    calls = []
    run = StageRunner(tmp_path)
    assert run("a", {"x": 1}, lambda: calls.append(1) or {"n": 1}) == {"n": 1}
    assert StageRunner(tmp_path)("a", {"x": 1}, lambda: calls.append(2) or {"n": 2}) == {"n": 1}
    assert StageRunner(tmp_path)("a", {"x": 2}, lambda: calls.append(3) or {"n": 3}) == {"n": 3}
    assert calls == [1, 3]


def test_a_moved_run_directory_or_a_linked_stage_resumes(tmp_path):
    import shutil

    calls = []

    def pipeline(root: Path, data: str = "prompts.jsonl") -> dict:
        run = StageRunner(root)
        sft = run("sft", {"output_dir": str(root / "sft"), "data": data},
                  lambda: calls.append(f"sft {root.name}") or {"model_dir": str(root / "sft" / "model")})
        # like the target stage: its settings hold a path from the sft stage's summary, resolved as a model's path is
        run("target", {"model": str(Path(sft["model_dir"]).resolve()), "output_dir": str(root / "target")},
            lambda: calls.append(f"target {root.name}") or {}, after=("sft",))
        return sft

    pipeline(tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    pipeline(tmp_path / "moved")
    (tmp_path / "other").mkdir()
    for stage in ("sft", "target"):
        (tmp_path / "other" / stage).symlink_to(tmp_path / "run" / stage)
    pipeline(tmp_path / "other")
    assert calls == ["sft run", "target run"]
    # a path that only starts like the run directory is not under it
    pipeline(tmp_path / "run", data=str(tmp_path / "run2" / "p.jsonl"))
    assert calls[2:] == ["sft run", "target run"]


def test_stage_reruns_when_an_upstream_stage_reran(tmp_path):
    calls = []

    def pipeline(sft_lr: float) -> None:
        run = StageRunner(tmp_path)
        run("sft", {"lr": sft_lr}, lambda: calls.append("sft") or {})
        run("train", {"beta": 0.1}, lambda: calls.append("train") or {}, after=("sft",))

    pipeline(1e-3)
    pipeline(1e-3)
    assert calls == ["sft", "train"]
    skipped = StageRunner(tmp_path)
    skipped("sft", {"lr": 1e-3}, lambda: {})
    assert skipped.seconds == {"sft": None}
    pipeline(1e-4)                      # same train settings, but Target-SFT was rebuilt
    assert calls == ["sft", "train", "sft", "train"]


def test_training_checkpoints_of_another_run_are_cleared(tmp_path):
    from wrpo_ray.train.run import _start_or_continue

    ckpt, metrics = tmp_path / "checkpoints", tmp_path / "metrics.jsonl"
    _start_or_continue(ckpt, metrics, "fp1")
    (ckpt / "run" / "step-000002").mkdir(parents=True)
    metrics.write_text('{"step": 1}\n')
    _start_or_continue(ckpt, metrics, "fp1")          # the same run, interrupted: kept
    assert (ckpt / "run" / "step-000002").is_dir() and metrics.exists()
    _start_or_continue(ckpt, metrics, "fp2")          # another run: cleared
    assert not (ckpt / "run").exists() and not metrics.exists()
    assert (ckpt / "run.json").is_file()


def test_metrics_logged_after_the_last_checkpoint_are_dropped_on_resume(tmp_path):
    from wrpo_ray.train.worker import drop_metrics_after

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(f'{{"step": {s}}}\n' for s in range(1, 8)))
    drop_metrics_after(metrics, 5)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_resume_fingerprint_sees_every_trajectory_setting():
    """A new max_length, loss on the prompt, or reference changes the run; where to stop or log does not."""
    import dataclasses

    from wrpo_ray.config import PreferenceTrainConfig, SftConfig
    from wrpo_ray.train.run import _run_fingerprint
    from wrpo_ray.train.worker import LoopSpec

    spec = LoopSpec(**{f.name: 1 for f in dataclasses.fields(LoopSpec)})
    policy = {"name": "t", "path": "toy://target"}
    base = SftConfig(policy=policy, data="x", output_dir="o")
    fp = _run_fingerprint(spec, base, [])
    assert _run_fingerprint(spec, base.model_copy(update={"max_steps": 3, "save_steps": 9}), []) == fp
    assert _run_fingerprint(spec, base.model_copy(update={"max_length": 99}), []) != fp
    assert _run_fingerprint(spec, base.model_copy(update={"completion_only_loss": False}), []) != fp
    pref = PreferenceTrainConfig(policy=policy, data="x", output_dir="o")
    other_ref = pref.model_copy(update={"reference": {"name": "r", "path": "toy://llama"}})
    assert _run_fingerprint(spec, pref, []) != _run_fingerprint(spec, PreferenceTrainConfig.model_validate(
        other_ref.model_dump()), [])


def _sided(side, row):
    return pa.Table.from_pylist([{"side": side, **row}], schema=SIDED).to_pylist()


def test_quadruple_joins_the_two_sides_of_a_prompt():
    group = _sided("sources", _sel("1", "src1", 0.9)) + _sided("target", _sel("1", "t1-best", 0.5, "t1-worst", 0.1))
    (row,) = quadruple_of(group)
    assert pa.Table.from_pylist([row], schema=QUADRUPLE_OR_ASIDE).num_rows == 1
    assert row["kind"] == "quadruple"
    assert (row["y_ws"], row["y_wt"], row["y_l"], row["reward_ws"]) == ("src1", "t1-best", "t1-worst", 0.9)


def test_quadruple_sets_aside_tied_and_thin_target_samples():
    tied = quadruple_of(_sided("sources", _sel("2", "s", 0.8)) + _sided("target", _sel("2", "t2", 0.3, "t2b", 0.3)))
    thin = quadruple_of(_sided("sources", _sel("3", "s", 0.1)) + _sided("target", _sel("3", "t3", 0.9, candidates=1)))
    assert tied[0]["kind"] == thin[0]["kind"] == "quarantine"
    assert tied[0]["reason"].startswith("target_samples_tied")
    assert thin[0]["reason"].startswith("too_few_target_samples")
    assert quadruple_of(_sided("sources", _sel("4", "s", 0.1))) == []   # an SFT prompt: no target side


def test_target_prompts_are_the_complement_of_the_sft_split():
    ids = [str(i) for i in range(60)]
    batch = pa.Table.from_pylist([_sel(i, "y", 1.0) for i in ids], schema=SELECTIONS)
    rows = [json.loads(line) for line in target_prompt_lines(batch, seed=0, fraction=1 / 3)["line"].to_pylist()]
    assert {r["prompt_id"] for r in rows} == {i for i in ids if not in_sft_split(i, 0, 1 / 3)}
    assert all(r["answer"] == "a" and r["messages"][0]["role"] == "user" for r in rows)


def test_driver_env_leaves_out_what_the_submitted_job_sets(monkeypatch):
    """Ray refuses to merge a second value for a variable the job's runtime env already sets."""
    from wrpo_ray.runtime import _job_env_vars

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _job_env_vars() == set()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"env_vars": {"DS_ACCELERATOR": "cpu", "HF_HOME": "/x"}}}))
    assert _job_env_vars() == {"DS_ACCELERATOR", "HF_HOME"}


def test_engine_start_up_is_read_from_the_pools_actor_creations():
    from wrpo_ray.generate.engine_starts import summarize

    since = 1000.0
    spans = [(990_000, 995_000), (1_000_500, 1_009_500), (1_000_200, 1_012_200)]  # an earlier stage's, then two
    assert summarize(spans, since) == {"engines": 2, "start_s": [12.0, 9.0], "all_ready_after_s": 12.2}
    assert summarize(spans[:1], since) == {}


def test_each_preference_method_is_trained_once_per_seed():
    import pytest

    from wrpo_ray.config import PreferenceTrainConfig, RunConfig
    from wrpo_ray.pipeline import _runtime_ratio, seed_runs

    train = PreferenceTrainConfig()
    methods = [("dpo_on", "Target-SFT-DPO", train), ("wrpo", "Target-SFT-WRPO", train)]
    assert seed_runs(methods, []) == methods
    runs = seed_runs(methods, [3, 7])
    assert [(n, label, c.seed) for n, label, c in runs] == [
        ("dpo_on-s3", "Target-SFT-DPO-s3", 3), ("dpo_on-s7", "Target-SFT-DPO-s7", 7),
        ("wrpo-s3", "Target-SFT-WRPO-s3", 3), ("wrpo-s7", "Target-SFT-WRPO-s7", 7)]
    with pytest.raises(ValueError, match="distinct"):
        RunConfig(output_dir="x", seeds=[1, 1])
    stages = {k: {"seconds": {"train": 10.0, "per_step_median": v}} for k, v in (("dpo_on-s3", 0.1), ("wrpo-s3", 0.12))}
    assert "1.20x" in _runtime_ratio(stages)


def test_each_preference_method_trains_its_own_objective():
    from wrpo_ray.config import load_config
    from wrpo_ray.pipeline import method_train_config

    train = load_config("jobs/configs/tiny-cpu.yaml").train
    loss = {m: method_train_config(train, m).loss for m in ("wrpo", "wrpo_static", "dpo_on", "dpo_hybrid")}
    assert (loss["wrpo"].objective, loss["wrpo"].schedule) == ("wrpo", "dynamic")
    assert (loss["wrpo_static"].objective, loss["wrpo_static"].schedule) == ("wrpo", "static")
    assert (loss["dpo_on"].objective, loss["dpo_on"].pair) == ("dpo", "on")
    assert (loss["dpo_hybrid"].objective, loss["dpo_hybrid"].pair) == ("dpo", "hybrid")
    assert loss["wrpo_static"].alpha == loss["wrpo"].alpha == 0.5

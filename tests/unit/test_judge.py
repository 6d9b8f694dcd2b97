"""The eval judge: its own setting, the fallback to generate.reward, and the self-judging warning."""

import json
from pathlib import Path

import pytest
import yaml

from wrpo_ray import cli
from wrpo_ray.config import ConfigError, load_config, parse_config, resolve_judge

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "jobs" / "configs" / "paper-llama3-8b.yaml"
TINY = REPO / "jobs" / "configs" / "tiny-cpu.yaml"
RM = {"model": {"name": "rm", "path": "toy://reward"}}
OTHER_RM = {"model": {"name": "other-rm", "path": "toy://llama"}}
VERIFIER = {"verifier": "wrpo_ray.toy.task:verify"}


def _raw(tmp_path: Path, reward: dict | None = RM, judge: dict | None = None) -> dict:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    raw: dict = {"eval": {"prompts": str(prompts), "output_dir": str(tmp_path / "eval"),
                          "models": [{"name": "Target-SFT", "path": "toy://target"},
                                     {"name": "Target-SFT-WRPO", "path": "toy://qwen2"}]}}
    if reward is not None:
        raw["generate"] = {"output_dir": str(tmp_path / "out"), "data": {"prompts": str(prompts)},
                           "sources": [{"name": "a", "path": "toy://llama"}], "reward": reward}
    if judge is not None:
        raw["eval"]["judge"] = judge
    return raw


def test_fallback_to_the_training_reward_model_warns(tmp_path):
    judge, warning = resolve_judge(parse_config(_raw(tmp_path)))
    assert judge.model.path == "toy://reward"
    assert "reward model that built the training data" in warning and "flatter" in warning


def test_eval_judge_that_is_the_same_reward_model_warns(tmp_path):
    same = {"model": {"name": "judge", "path": "toy://reward", "pool": {"concurrency": 2}}}
    judge, warning = resolve_judge(parse_config(_raw(tmp_path, judge=same)))
    assert judge.model.name == "judge" and warning is not None


def test_a_different_eval_judge_does_not_warn(tmp_path):
    judge, warning = resolve_judge(parse_config(_raw(tmp_path, judge=OTHER_RM)))
    assert judge.model.path == "toy://llama" and warning is None


def test_a_verifier_is_ground_truth_and_does_not_warn(tmp_path):
    judge, warning = resolve_judge(parse_config(_raw(tmp_path, reward=VERIFIER)))
    assert judge.verifier == "wrpo_ray.toy.task:verify" and warning is None


def test_eval_judge_without_generate_section(tmp_path):
    judge, warning = resolve_judge(parse_config(_raw(tmp_path, reward=None, judge=OTHER_RM)))
    assert judge.model.name == "other-rm" and warning is None


def test_no_judge_at_all_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="eval.judge"):
        resolve_judge(parse_config(_raw(tmp_path, reward=None)))


def test_old_eval_reward_key_names_the_new_one(tmp_path):
    raw = _raw(tmp_path)
    raw["eval"]["reward"] = OTHER_RM
    with pytest.raises(ConfigError, match="eval.reward is now eval.judge"):
        parse_config(raw)


def test_paper_recipe_judges_with_another_reward_model(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    cfg = load_config(PAPER, [f"generate.data.prompts={prompts}", f"eval.prompts={prompts}"])
    judge, warning = resolve_judge(cfg)
    assert judge.model.path == "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
    assert judge.model.path != cfg.generate.reward.model.path and not judge.model.trust_remote_code
    assert warning is None


def test_tiny_demo_is_judged_by_its_verifier_without_warning(monkeypatch):
    monkeypatch.chdir(REPO)
    judge, warning = resolve_judge(load_config(TINY))
    assert judge.verifier == "wrpo_ray.toy.task:verify" and warning is None


def _samples() -> list[dict]:
    rows = []
    for i in range(6):
        meta = json.dumps({"skill": "add", "answer": "4"})
        rows.append({"model": "Target-SFT", "prompt_id": f"p{i}", "reward": 0.5, "response": "4", "metadata": meta})
        rows.append({"model": "Target-SFT-WRPO", "prompt_id": f"p{i}", "reward": 0.5 + 0.1 * (i % 2),
                     "response": "4", "metadata": meta})
    return rows


def test_report_prints_and_stores_the_judge_warning(tmp_path):
    from wrpo_ray.eval.stage import write_report

    cfg = parse_config(_raw(tmp_path)).eval.model_copy(update={"bootstrap_resamples": 20})
    summary = write_report(cfg, _samples(), {}, warning="judge is the reward model")
    assert summary["table"].splitlines()[0] == "WARNING: judge is the reward model"
    stored = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert stored["judge_warning"] == "judge is the reward model"
    assert "WARNING: judge is the reward model" in (tmp_path / "eval" / "results.md").read_text()

    clean = write_report(cfg, _samples(), {})
    assert clean["judge_warning"] is None and not clean["table"].startswith("WARNING")
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["judge_warning"] is None


def test_cmd_eval_passes_the_resolved_judge_and_warning(tmp_path, monkeypatch, capsys):
    import wrpo_ray.eval.stage as stage

    calls = []

    def fake_run_eval(cfg, judge, metrics_files=None, warning=None):
        calls.append((judge, warning))
        return {"table": "TABLE"}

    monkeypatch.setattr(stage, "run_eval", fake_run_eval)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path)))
    assert cli.main(["eval", "--config", str(path)]) == 0
    (judge, warning), = calls
    assert judge.model.path == "toy://reward" and "built the training data" in warning
    assert "warning: " in capsys.readouterr().err

    calls.clear()
    assert cli.main(["eval", "--config", str(path), "--set", "eval.judge.model.name=j",
                     "--set", "eval.judge.model.path=toy://llama"]) == 0
    (judge, warning), = calls
    assert judge.model.path == "toy://llama" and warning is None


def test_pipeline_eval_stage_uses_the_resolved_judge(tmp_path, monkeypatch):
    import wrpo_ray.eval.stage as stage
    from wrpo_ray.pipeline import StageRunner, eval_stage

    calls = []

    def fake_run_eval(cfg, judge, metrics_files=None, warning=None):
        calls.append((cfg, judge, warning))
        return {"table": "TABLE", "judge_warning": warning}

    monkeypatch.setattr(stage, "run_eval", fake_run_eval)
    cfg = parse_config(_raw(tmp_path))
    summary = eval_stage(cfg, StageRunner(tmp_path / "run"), cfg.eval.models, {})
    (eval_cfg, judge, warning), = calls
    assert judge.model.path == "toy://reward" and "built the training data" in warning
    assert eval_cfg.judge == judge and eval_cfg.output_dir == str(tmp_path / "run" / "eval")
    assert summary["judge_warning"] == warning

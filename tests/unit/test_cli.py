"""`wrpo-ray`: config mistakes exit 2 with one line naming the key, and `validate` checks without Ray."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wrpo_ray.cli import main
from wrpo_ray.config import ConfigError, apply_override

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny-cpu.yaml"
PAPER = REPO / "jobs" / "configs" / "paper-llama3-8b.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _run(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out.splitlines(), captured.err.splitlines()


@pytest.mark.parametrize(("override", "expected"), [
    ("generate.sources.9.name=x", "generate.sources.9.name: index 9 is out of range: generate.sources has 3"),
    ("generate.sources.x.name=y", "generate.sources.x.name: generate.sources is a list of 3 items; 'x' is not"),
    ("run_name.x=1", "run_name.x: run_name is a str"),
    ("generate.seed=[1", "generate.seed: value '[1' is not valid YAML"),
    ("sft.max_prompt_length=500", "sft.max_prompt_length: 500 must be smaller than max_length (96)"),
    ("generate.sources.1.name=llama-src", "generate.sources: duplicate names ['llama-src']"),
    ("generate.reward.model={name: rm, path: 'toy://reward'}", "generate.reward: set exactly one of"),
    ("generate.seed", "--set 'generate.seed' is not of the form key.path=value"),
])
@pytest.mark.parametrize("command", ["validate", "eval", "run"])
def test_bad_overrides_exit_2_with_one_line_naming_the_key(capsys, command, override, expected):
    rc, out, err = _run(capsys, command, "--config", str(TINY), "--set", override)
    assert rc == 2 and out == []
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


@pytest.mark.parametrize(("override", "key"), [
    ("generate.sources.9.name=x", "generate.sources.9.name"),
    ("generate.sources.-1.name=x", "generate.sources.-1.name"),
    ("generate.sources.x.name=y", "generate.sources.x.name"),
    ("run_name.x=1", "run_name.x"),
    ("run_name.x.y=1", "run_name.x.y"),
    ("generate.seed=[1", "generate.seed"),
    ("generate..seed=1", "generate..seed"),
])
def test_apply_override_raises_config_error_with_the_key(override, key):
    raw = yaml.safe_load(TINY.read_text())
    with pytest.raises(ConfigError, match=f"^--set '?{key.replace('.', '[.]')}"):
        apply_override(raw, override)


def test_apply_override_sets_values_in_lists_and_new_mappings():
    raw = {"generate": {"sources": [{"name": "a"}, {"name": "b"}]}, "eval": {"judge": None}}
    apply_override(raw, "generate.sources.1.sampling.n=3")
    apply_override(raw, "eval.judge.verifier=m:f")
    apply_override(raw, "generate.sources.0={name: c}")
    assert raw == {"generate": {"sources": [{"name": "c"}, {"name": "b", "sampling": {"n": 3}}]},
                   "eval": {"judge": {"verifier": "m:f"}}}


def test_invalid_yaml_config_file_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("generate: [1\n")
    rc, _, err = _run(capsys, "validate", "--config", str(path))
    assert rc == 2 and len(err) == 1 and "is not valid YAML" in err[0]


def test_validate_tiny_config(capsys):
    rc, out, err = _run(capsys, "validate", "--config", str(TINY))
    assert rc == 0 and err == []
    assert out[0] == f"config OK: {TINY}"
    assert not any(line.startswith("warning:") for line in out)
    assert any("train.loss: wrpo-dpo (dynamic) beta=0.1  alpha=0.5  lr=3e-05" in line for line in out)


def test_validate_paper_config_names_the_missing_data(capsys):
    rc, out, err = _run(capsys, "validate", "--config", str(PAPER))
    assert rc == 2 and out == []
    assert any(line.startswith("error: ") and "generate.data.prompts" in line for line in err)
    assert any("eval.prompts" in line for line in err)


def test_validate_paper_config_with_local_data(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    rc, out, _ = _run(capsys, "validate", "--config", str(PAPER), "--set", f"generate.data.prompts={prompts}",
                      "--set", f"eval.prompts={prompts}")
    assert rc == 0 and out[0].startswith("config OK")
    assert "note: train: 8 workers x 8 CPUs, 8 GPUs (one per worker); effective batch 128 = workers x micro " \
           "batch 2 x accumulation 8" in out
    assert any("train.loss: wrpo-dpo (dynamic) beta=0.01  alpha=0.1  lr=3e-07" in line for line in out)
    assert not any(line.startswith("warning:") for line in out)


def test_validate_warns_when_the_judge_is_the_training_reward_model(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    rc, out, _ = _run(capsys, "validate", "--config", str(PAPER), "--set", f"generate.data.prompts={prompts}",
                      "--set", f"eval.prompts={prompts}", "--set", "eval.judge=null")
    assert rc == 0
    assert any(line.startswith("warning: ") and "built the training data" in line for line in out)


def _write(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_validate_reports_missing_run_sections_and_standalone_needs(tmp_path, capsys):
    raw = yaml.safe_load(TINY.read_text())
    del raw["sft"]
    rc, _, err = _run(capsys, "validate", "--config", _write(tmp_path, raw))
    assert rc == 2 and "error: run: `wrpo-ray run` needs a 'sft' section" in err

    del raw["run"]
    raw["eval"]["models"] = [{"name": "a", "path": "toy://llama"}]
    rc, _, err = _run(capsys, "validate", "--config", _write(tmp_path, raw))
    assert rc == 2
    assert "error: train.policy is required for `wrpo-ray train`" in err
    assert "error: eval.output_dir is required" in err
    assert any("eval.baseline 'Target-SFT' is not one of eval.models ['a']" in line for line in err)


def test_validate_checks_tensor_parallel_against_pool_gpus(capsys):
    rc, out, _ = _run(capsys, "validate", "--config", str(TINY), "--set", "target.pool.num_gpus=1",
                      "--set", "target.engine_kwargs.tensor_parallel_size=2")
    assert rc == 0
    assert "warning: target: engine_kwargs.tensor_parallel_size 2 uses 2 GPUs per actor, pool.num_gpus reserves 1" \
        in out
    assert "note: target: up to 1 actor(s) x 1 GPUs = 1 GPUs" in out


def test_validate_reports_gpus_needed_by_training(capsys):
    rc, out, _ = _run(capsys, "validate", "--config", str(TINY), "--set", "train.use_gpu=true",
                      "--set", "train.num_workers=4")
    assert rc == 0
    assert any(line.startswith("note: train: 4 workers") and "4 GPUs (one per worker)" in line for line in out)


def test_run_without_a_section_is_a_config_error(capsys):
    rc, _, err = _run(capsys, "run", "--config", str(TINY), "--set", "target=null")
    assert rc == 2 and err == ["error: `wrpo-ray run` needs a 'target' section"]


def test_validate_imports_neither_ray_nor_vllm():
    code = ("import json, sys\nfrom wrpo_ray.cli import main\n"
            f"rc = main(['validate', '--config', {str(TINY)!r}])\n"
            "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'vllm'})]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rc, heavy = json.loads(proc.stdout.splitlines()[-1])
    assert rc == 0 and heavy == []

from pathlib import Path

import pytest
import yaml

from wrpo_ray.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny-cpu.yaml"


def _raw(tmp_path: Path) -> dict:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    return {
        "generate": {
            "output_dir": str(tmp_path / "out"),
            "data": {"prompts": str(prompts)},
            "sources": [{"name": "a", "path": "toy://llama"}, {"name": "b", "path": "toy://qwen2"}],
            "reward": {"model": {"name": "rm", "path": "toy://reward"}},
        }
    }


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    return str(e.value)


def test_tiny_config_loads(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(TINY)
    assert [s.name for s in cfg.generate.sources] == ["llama-src", "qwen2-src", "mistral-src"]
    assert cfg.generate.sources[0].sampling.n == 4
    assert cfg.generate.reward.verifier == "wrpo_ray.toy.task:verify"
    assert cfg.run.baselines == ["dpo_on"] and cfg.eval.baseline == "Target-SFT"
    assert all(not s.trust_remote_code for s in cfg.generate.sources)


def test_defaults_are_the_papers(tmp_path):
    s = parse_config(_raw(tmp_path)).generate.sources[0].sampling
    assert (s.n, s.temperature, s.top_p) == (5, 0.8, 0.95)


def test_unknown_key_is_named(tmp_path):
    raw = _raw(tmp_path)
    raw["generate"]["sources"][0]["sampling"] = {"temprature": 0.5}
    assert "generate.sources.0.sampling.temprature" in _error(raw)


def test_missing_model_path_is_named(tmp_path):
    raw = _raw(tmp_path)
    raw["generate"]["sources"][1]["path"] = str(tmp_path / "nope")
    msg = _error(raw)
    assert "generate.sources.1.path" in msg and "does not exist" in msg


def test_missing_prompts_file_is_named(tmp_path):
    raw = _raw(tmp_path)
    raw["generate"]["data"]["prompts"] = str(tmp_path / "missing.jsonl")
    assert "generate.data.prompts" in _error(raw)


@pytest.mark.parametrize(("key", "value"), [("n", 0), ("temperature", -1.0), ("top_p", 1.5), ("max_tokens", 0)])
def test_out_of_range_sampling(tmp_path, key, value):
    raw = _raw(tmp_path)
    raw["generate"]["sources"][0]["sampling"] = {key: value}
    assert f"generate.sources.0.sampling.{key}" in _error(raw)


def test_unknown_toy_model(tmp_path):
    raw = _raw(tmp_path)
    raw["generate"]["sources"][0]["path"] = "toy://gpt5"
    assert "unknown toy model" in _error(raw)


def test_duplicate_source_names(tmp_path):
    raw = _raw(tmp_path)
    raw["generate"]["sources"][1]["name"] = "a"
    assert "duplicate names" in _error(raw)


def test_reward_needs_exactly_one_of_model_and_verifier(tmp_path):
    raw = _raw(tmp_path)
    raw["generate"]["reward"]["verifier"] = "wrpo_ray.toy.task:verify"
    assert "exactly one" in _error(raw)
    raw["generate"]["reward"] = {"verifier": "wrpo_ray.toy.task:no_such_fn"}
    assert "cannot import" in _error(raw)
    raw["generate"]["reward"] = {"verifier": "wrpo_ray.toy.task:verify"}
    assert parse_config(raw).generate.reward.verifier == "wrpo_ray.toy.task:verify"


def test_hub_id_accepted_without_download(tmp_path):
    raw = _raw(tmp_path)
    raw["generate"]["sources"][0]["path"] = "meta-llama/Meta-Llama-3-8B-Instruct"
    assert parse_config(raw).generate.sources[0].path == "meta-llama/Meta-Llama-3-8B-Instruct"


def test_overrides_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path)))
    cfg = load_config(path, ["generate.sources.0.sampling.n=7", "generate.seed=3"])
    assert cfg.generate.sources[0].sampling.n == 7 and cfg.generate.seed == 3
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_paper_recipe_validates(tmp_path, monkeypatch):
    """The GPU-cluster recipe: ten sources, ArmoRM, Table 6 defaults; data paths pointed at local files."""
    monkeypatch.chdir(REPO)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    cfg = load_config(REPO / "jobs" / "configs" / "paper-llama3-8b.yaml",
                      [f"generate.data.prompts={prompts}", f"eval.prompts={prompts}"])
    assert len(cfg.generate.sources) == 10
    assert len({s.path for s in cfg.generate.sources}) == 10
    assert all(s.sampling.n == 5 and s.sampling.temperature == 0.8 for s in cfg.generate.sources)
    assert cfg.generate.reward.model.path == "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    assert cfg.target.path == "meta-llama/Meta-Llama-3-8B-Instruct"
    from wrpo_ray.train.run import loss_config

    loss = loss_config(cfg.train)
    assert (loss.name, loss.beta, loss.alpha, loss.schedule) == ("wrpo-dpo", 0.01, 0.1, "dynamic")
    assert cfg.train.num_workers * cfg.train.micro_batch_size * cfg.train.gradient_accumulation_steps == 128


def test_run_checks_seeds_baseline_and_groups_before_any_stage():
    from wrpo_ray.config import group_errors, run_errors, run_model_names

    cfg = load_config(TINY, ["run.seeds=[0,1]"])
    assert run_model_names(cfg) == ["Target", "Target-SFT", "Target-SFT-DPO-s0", "Target-SFT-DPO-s1",
                                    "Target-SFT-WRPO-s0", "Target-SFT-WRPO-s1"]
    assert run_errors(cfg) == []
    bad = load_config(TINY, ["run.seeds=[0,1]", "train.shuffle=false",
                                                     "eval.baseline=Target-SFT-WRPO"])
    errors = run_errors(bad)
    assert any("train.shuffle false" in e for e in errors) and any("eval.baseline" in e for e in errors)
    static = load_config(TINY, ["run.baselines=[dpo_on,wrpo_static,dpo_on]", "train.loss.schedule=static"])
    assert run_errors(static) == [
        "run.baselines has wrpo_static while train.loss.schedule is static: both would train the same WRPO",
        "run.baselines names a method twice: ['dpo_on', 'wrpo_static', 'dpo_on']"]
    models = ["T", "A-s0", "A-s1", "B-s0"]
    assert group_errors({"A": ["A-s0", "A-s1"], "B": ["B-s0"]}, models) == []
    assert group_errors({"T": ["A-s0"]}, models) == ["eval.groups: group 'T' has the name of a model"]
    assert group_errors({"A": ["A-s0", "A-s1"], "B": ["B-s0", "nope", "T"]}, models) == [
        "eval.groups.B: 'nope' is not one of eval.models",
        "eval.groups: groups of several seeds must be equally large, got sizes [2, 3]"]

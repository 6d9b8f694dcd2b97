"""Stopping a run leaves nothing behind: every way a driver that started its own local Ray instance can end.

Each case runs the `wrpo-ray` command in its own session with a marker in its environment, stops it the way a
person or a process manager would, and walks the whole process table for the marker before and after
(tests/integration/process_tree.py). `ray job stop` of a submitted job is in test_job_submit.py, on its head.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.process_tree import Driver, named, role
from tests.integration.ray_heads import BIN
from wrpo_ray.generate.commit import committed_files
from wrpo_ray.toy.task import make_examples, make_preference_rows, write_jsonl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 15.0
"""How long everything a stopped driver started may take to end (measured: 0-8 s)."""
FILES, PER_FILE = 8, 300
"""Prompts in several files: each file is a block that commits on its own, so a stop finds work committed."""
ENGINE = {"dtype": "float32",
          "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20, "max_model_len": 256, "enforce_eager": True},
          "pool": {"num_cpus": 0.5, "batch_size": 32}}
TRAINER = {"num_workers": 2, "micro_batch_size": 2, "learning_rate": 1e-3, "max_length": 64,
           "max_prompt_length": 32, "save_steps": 2, "epochs": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Prompts, preference rows and one config with every section the cases need."""
    root = tmp_path_factory.mktemp("stopping")
    prompts = root / "prompts"
    prompts.mkdir()
    rows = make_examples(FILES * PER_FILE, seed=11)
    for i in range(FILES):
        write_jsonl(rows[i * PER_FILE:(i + 1) * PER_FILE], prompts / f"part-{i}.jsonl")
    write_jsonl(make_examples(8, seed=12), root / "few.jsonl")
    write_jsonl(make_preference_rows(64, seed=3), root / "pref.jsonl")
    write_jsonl(make_examples(400, seed=13), root / "eval.jsonl")
    # the untrained toy Llama seldom stops before max_tokens: every prompt costs its full budget
    source = {"name": "llama-src", "path": "toy://llama", **ENGINE,
              "sampling": {"n": 2, "temperature": 0.8, "top_p": 0.95, "max_tokens": 48}}
    config = {
        "run_name": "stopping",
        "run": {"output_dir": str(root / "run")},
        "generate": {"output_dir": str(root / "gen"), "data": {"prompts": str(prompts)}, "sources": [source],
                     "reward": {"verifier": "wrpo_ray.toy.task:verify"}, "keep_truncated": True},
        "target": {"name": "target", "path": "toy://target", **ENGINE, "sampling": {"n": 2, "max_tokens": 8}},
        "sft": {**TRAINER, "output_dir": str(root / "sft"), "data": str(root / "pref.jsonl")},
        "train": {**TRAINER, "output_dir": str(root / "train"), "data": str(root / "pref.jsonl"),
                  "policy": {"name": "target", "path": "toy://target", "dtype": "float32"},
                  "loss": {"objective": "wrpo", "inner": "dpo", "beta": 0.5, "alpha": 0.5}},
        "eval": {"prompts": str(root / "eval.jsonl"), "output_dir": str(root / "eval"),
                 "models": [{"name": "llama", "path": "toy://llama", "dtype": "float32"}], "baseline": "llama",
                 "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 48},
                 "engine_kwargs": ENGINE["engine_kwargs"], "pool": ENGINE["pool"], "bootstrap_resamples": 100},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _start(world: Path, name: str, *args: str) -> Driver:
    argv = [str(BIN / "wrpo-ray"), *args, "--config", str(world / "config.yaml")]
    return Driver(argv, world / f"{name}.console.log", cwd=REPO)


def _generating(ps) -> bool:
    return named(ps, "VLLMGenerator")


def _report(name: str, stop) -> None:
    """One line per case: what ran before, what was left, how long it took (the closing note's table)."""
    print(f"\nSTOP {name}: rc={stop.returncode} driver_exit_s={stop.driver_exit_s} all_gone_s={stop.all_gone_s} "
          f"before={json.dumps(stop.before, sort_keys=True)} after={json.dumps(stop.after, sort_keys=True)}")


def _assert_nothing_left(stop) -> None:
    assert stop.before.get("ray node", 0) >= 2 and stop.before.get("ray worker", 0) >= 1, stop.before
    assert not stop.leftovers, "\n".join(stop.leftovers) + "\n" + stop.output[-3000:]
    assert stop.all_gone_s is not None and stop.all_gone_s <= stop.driver_exit_s + GRACE_S


def _assert_says_how_to_resume(stop, signal_name: str, command: str) -> None:
    assert f"stopped by {signal_name}" in stop.output, stop.output[-3000:]
    assert f"\n  wrpo-ray {command} " in stop.output
    assert "Traceback" not in stop.output, stop.output[-3000:]


def _ctrl_c(driver: Driver, name: str, command: str):
    """Ctrl-C to the driver's group: 130 within 10 s, a resume line for `command`, nothing left."""
    stop = driver.stop("int-group")
    _report(name, stop)
    assert stop.returncode == 130
    _assert_says_how_to_resume(stop, "Ctrl-C", command)
    _assert_nothing_left(stop)
    assert stop.driver_exit_s <= 10


def test_ctrl_c_during_generation_of_run(world):
    """Ctrl-C in `wrpo-ray run` (its generation stage): 130, a resume line, committed batches kept."""
    # the shared config's eval section is the standalone eval's; `run` evaluates its own models against Target-SFT
    driver = _start(world, "ctrl-c-run", "run", "--set", "eval.baseline=Target-SFT")
    scored = world / "run" / "sources" / "scored"
    assert driver.wait_for(lambda ps: _generating(ps) and committed_files(scored), 300), driver.log.read_text()[-3000:]
    _ctrl_c(driver, "ctrl-c run/generation", "run")
    assert committed_files(scored)


@pytest.mark.parametrize("how, returncode", [("term", 143), ("kill", -9), ("term-then-kill-group", None)])
def test_generation_stopped_by_a_signal(world, how, returncode):
    """SIGTERM to the driver alone (a process manager), SIGKILL to it alone (the out-of-memory killer), and
    SIGTERM to the whole group then SIGKILL 3 s later (a short grace period): nothing outlives the driver."""
    driver = _start(world, f"generate-{how}", "generate", "--output-dir", str(world / f"gen-{how}"))
    assert driver.wait_for(_generating, 300), driver.log.read_text()[-3000:]
    stop = driver.stop(how)
    _report(f"generate {how}", stop)
    if returncode is not None:
        assert stop.returncode == returncode
    if how == "term":
        _assert_says_how_to_resume(stop, "SIGTERM", "generate")
    _assert_nothing_left(stop)


def test_error_and_normal_end(world, tmp_path):
    """A run that fails inside a Ray Data plan, and one that ends normally."""
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    failing = _start(world, "generate-error", "generate", "--output-dir", str(tmp_path / "err"),
                     "--set", f"generate.sources.0.path={not_a_model}")
    assert failing.wait_for(lambda ps: any(role(p) == "ray worker" for p in ps), 120)
    stop = failing.stop("none")
    _report("generate error", stop)
    assert stop.returncode == 1
    _assert_nothing_left(stop)

    normal = _start(world, "generate-normal", "generate", "--output-dir", str(tmp_path / "ok"),
                    "--set", f"generate.data.prompts={world / 'few.jsonl'}")
    assert normal.wait_for(_generating, 300)
    stop = normal.stop("none")
    _report("generate normal end", stop)
    assert stop.returncode == 0, stop.output[-3000:]
    _assert_nothing_left(stop)


def test_ctrl_c_during_reference_and_training(world):
    """`wrpo-ray train`: Ctrl-C while the reference log-probs are computed, then (run again) while it trains."""
    reference = _start(world, "train-ref", "train")
    assert reference.wait_for(lambda ps: named(ps, "ReferenceLogps"), 300), reference.log.read_text()[-3000:]
    _ctrl_c(reference, "ctrl-c reference", "train")

    metrics = world / "train" / "metrics.jsonl"
    training = _start(world, "train-steps", "train")
    assert training.wait_for(lambda ps: metrics.is_file() and metrics.read_text().count("\n") >= 2, 400), \
        training.log.read_text()[-3000:]
    assert named(training.processes(), "RayTrainWorker")
    _ctrl_c(training, "ctrl-c training", "train")
    assert (world / "train" / "checkpoints").is_dir()


def test_ctrl_c_during_evaluation(world):
    driver = _start(world, "eval", "eval")
    assert driver.wait_for(_generating, 300), driver.log.read_text()[-3000:]
    _ctrl_c(driver, "ctrl-c eval", "eval")

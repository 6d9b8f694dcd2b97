"""cluster/: the launcher config and KubeRay manifests, checked offline; every request of the paper recipe
fits a node type of each, and lands on the node type meant for it."""

from pathlib import Path

import pytest
import yaml

from wrpo_ray import placement
from wrpo_ray.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
PAPER = REPO / "jobs" / "configs" / "paper-llama3-8b.yaml"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _paper_config(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    return load_config(PAPER, [f"generate.data.prompts={prompts}", f"eval.prompts={prompts}"])


@pytest.mark.parametrize("name", sorted(placement.FILES))
def test_committed_files_are_rendered_from_placement(name):
    """Node sizes, markers and names live in wrpo_ray/placement.py only."""
    assert (CLUSTER / name).read_text() == placement.render(name), "run: python -m wrpo_ray.placement cluster"


def test_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import validate_config

    config = _load("aws.yaml")
    validate_config(config)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and "InstanceMarketOptions" not in head["node_config"]
    spot = [n for n, t in config["available_node_types"].items() if "InstanceMarketOptions" in t["node_config"]]
    assert spot == ["gen-spot-gpu"] and config["available_node_types"]["gen-spot-gpu"]["min_workers"] == 0
    start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert any("[gpu]" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_kuberay_manifests(name):
    manifest = _load(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    assert spec["authOptions"] == {"mode": "token"} and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    spot = groups["gen-spot-gpu"]["template"]["spec"]
    assert spot["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
    assert any(t.get("value") == "spot" for t in spot["tolerations"])
    assert groups["gen-spot-gpu"]["minReplicas"] == 0
    if manifest["kind"] == "RayJob":
        assert "python -m jobs.run --config jobs/configs/paper-llama3-8b.yaml" in manifest["spec"]["entrypoint"]


def _node_types() -> dict[str, dict[str, dict[str, float]]]:
    return {
        "aws.yaml": placement.node_resources_of_launcher(_load("aws.yaml")),
        "kuberay/raycluster.yaml": placement.node_resources_of_raycluster(_load("kuberay/raycluster.yaml")),
        "kuberay/rayjob.yaml": placement.node_resources_of_raycluster(_load("kuberay/rayjob.yaml")),
    }


def test_every_request_of_the_paper_recipe_fits_a_node_type(tmp_path):
    cfg = _paper_config(tmp_path)
    assert len(placement.requests(cfg)) == 16  # ten sources, reward, target, eval, eval judge, sft, train
    for name, nodes in _node_types().items():
        assert placement.unplaceable(cfg, nodes) == [], name


def test_generation_lands_on_spot_nodes_and_training_on_on_demand_ones(tmp_path):
    cfg = _paper_config(tmp_path)
    for nodes in _node_types().values():
        for where, request in placement.requests(cfg):
            homes = {name for name, node in nodes.items() if placement.fits(request, node)}
            assert homes == ({"train-gpu"} if where.startswith(("sft", "train")) else {"gen-spot-gpu"}), where


def test_a_request_no_node_can_hold_is_reported(tmp_path):
    cfg = _paper_config(tmp_path)
    cfg.generate.sources[0].pool.num_gpus = 16
    problems = placement.unplaceable(cfg, _node_types()["aws.yaml"])
    assert len(problems) == 1 and problems[0].startswith("generate.sources.0:")


def test_pool_concurrency_is_a_size_or_a_range():
    from wrpo_ray.config import ConfigError, PoolConfig, parse_config

    assert PoolConfig(concurrency=[1, 4]).compute().max_size == 4
    assert PoolConfig(concurrency=[1, 4]).compute().min_size == 1
    assert PoolConfig(concurrency=3).max_actors == 3
    for bad in ([4, 1], [0, 2], 0):
        with pytest.raises(ValueError):
            PoolConfig(concurrency=bad)
    with pytest.raises(ValueError, match="num_cpus / num_gpus"):
        PoolConfig(resources={"GPU": 1})
    with pytest.raises(ConfigError, match="target.pool.concurrency"):
        parse_config({"target": {"name": "t", "path": "toy://target", "pool": {"concurrency": [3, 1]}}})


def test_validate_checks_placement_against_a_cluster_file(tmp_path, capsys):
    from wrpo_ray.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    common = ["validate", "--config", str(PAPER), "--set", f"generate.data.prompts={prompts}",
              "--set", f"eval.prompts={prompts}"]
    for cluster in ("aws.yaml", "kuberay/rayjob.yaml"):
        assert main([*common, "--cluster", str(CLUSTER / cluster)]) == 0
    capsys.readouterr()
    odd = ["--set", "train.resources_per_worker={gpu_x: 1}"]
    assert main([*common, "--cluster", str(CLUSTER / "aws.yaml"), *odd]) == 2
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("error: train (each worker") and "fits no node type" in line for line in err)
    assert main([*common, "--cluster", str(PAPER)]) == 2

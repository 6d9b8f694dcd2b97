"""Where each stage runs on a cluster: the node types, the custom resources that mark them, and what every
pool and trainer of a config asks for.

The files in `cluster/` are rendered from this module (`python -m wrpo_ray.placement cluster`) and a test
checks that they are, so node sizes and resource names live here only. Generation pools (sources, target
sampling, reward, evaluation) ask for `SPOT` to land on the spot GPU nodes; training workers and the
reference stage ask for `TRAIN` to land on the on-demand ones; the head asks nothing and runs no work.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrpo_ray.runtime import RAY_NODE_ENV

SPOT = "wrpo_spot"
"""Custom resource of the spot generation nodes: a pool with `resources: {wrpo_spot: 1}` runs only there."""
TRAIN = "wrpo_train"
"""Custom resource of the on-demand training nodes (`resources_per_worker: {wrpo_train: 1}`)."""
MARKER_UNITS = 1000
"""Units of a marker resource per node: enough for any number of actors a node's CPUs and GPUs can hold."""


@dataclass(frozen=True)
class NodeType:
    """One kind of node: its size, its market, and the marker resource that work can ask for."""

    name: str
    aws_instance: str
    cpus: int
    gpus: int
    memory_gib: int
    spot: bool
    marker: str | None
    min_workers: int = 0
    max_workers: int = 0
    k8s_selector: dict[str, str] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, float]:
        """What Ray sees on such a node (the head declares no CPU, so no task or actor lands on it)."""
        out: dict[str, float] = {"CPU": self.cpus, "GPU": self.gpus}
        if self.marker:
            out[self.marker] = MARKER_UNITS
        return out


HEAD = NodeType("head", "m6i.2xlarge", cpus=0, gpus=0, memory_gib=32, spot=False, marker=None)
NODE_TYPES: tuple[NodeType, ...] = (
    # 8 x A100 80 GB: the paper's largest sources (Mistral-Large-2407, DeepSeek-V2) need tensor parallel 8
    NodeType("gen-spot-gpu", "p4de.24xlarge", cpus=96, gpus=8, memory_gib=1152, spot=True, marker=SPOT,
             min_workers=0, max_workers=8, k8s_selector={"karpenter.sh/capacity-type": "spot"}),
    NodeType("train-gpu", "p4de.24xlarge", cpus=96, gpus=8, memory_gib=1152, spot=False, marker=TRAIN,
             min_workers=0, max_workers=2, k8s_selector={"karpenter.sh/capacity-type": "on-demand"}),
)
IDLE_TIMEOUT_MINUTES = 10


# --- what a config asks for ---------------------------------------------------------------------------


def requests(cfg: Any) -> list[tuple[str, dict[str, float]]]:
    """`(where, resources)` of one actor or worker of every pool and trainer in a parsed `WrpoConfig`."""
    from wrpo_ray.config import actor_pools

    out = [(where, {"CPU": pool.num_cpus, "GPU": pool.num_gpus, **pool.resources})
           for where, pool, _ in actor_pools(cfg)]
    for name in ("sft", "train"):
        trainer = getattr(cfg, name)
        if trainer is not None:
            out.append((f"{name} (each worker, and each reference actor)",
                        {"CPU": trainer.cpus_per_worker, "GPU": 1.0 if trainer.use_gpu else 0.0,
                         **trainer.resources_per_worker}))
    return out


def fits(request: dict[str, float], node: dict[str, float]) -> bool:
    return all(amount <= node.get(name, 0.0) for name, amount in request.items() if amount > 0)


def unplaceable(cfg: Any, nodes: dict[str, dict[str, float]]) -> list[str]:
    """Requests of `cfg` that no node type can hold: on a cluster they would wait forever."""
    return [f"{where}: {request} fits no node type of {sorted(nodes)}" for where, request in requests(cfg)
            if not any(fits(request, node) for node in nodes.values())]


# --- the cluster files --------------------------------------------------------------------------------

SETUP_COMMANDS = [
    "python -m pip install -U pip",
    # the project (synced by file_mounts from where `ray up` runs) and its GPU extra: the same on every node
    "python -m pip install -e '/home/ubuntu/wrpo-ray[gpu]'",
]
IMAGE = "wrpo-ray:gpu"
"""The KubeRay pods' image, built from cluster/kuberay/Dockerfile (the project and its GPU extra installed)."""
NODE_ENV = "export " + " ".join(f"{k}={v}" for k, v in {"RAY_AUTH_MODE": "token", **RAY_NODE_ENV}.items())
"""Every node's `ray start` environment: token auth, and per-worker process groups (runtime.RAY_NODE_ENV)."""


def launcher_config() -> dict[str, Any]:
    """The Ray cluster launcher config (AWS): an on-demand head, spot generation GPUs, on-demand training GPUs."""
    def node(t: NodeType, head: bool) -> dict[str, Any]:
        config: dict[str, Any] = {"InstanceType": t.aws_instance,
                                  "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 1000}}]}
        if t.spot:
            config["InstanceMarketOptions"] = {"MarketType": "spot"}
        entry: dict[str, Any] = {"resources": t.resources, "node_config": config}
        if not head:
            entry.update(min_workers=t.min_workers, max_workers=t.max_workers)
        return entry

    return {
        "cluster_name": "wrpo-ray",
        "max_workers": sum(t.max_workers for t in NODE_TYPES),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False,
                     # the dashboard (8265) and client (10001) ports stay closed: use `ray dashboard` (a tunnel)
                     "use_internal_ips": False},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {HEAD.name: node(HEAD, head=True), **{t.name: node(t, head=False) for t in NODE_TYPES}},
        "head_node_type": HEAD.name,
        "file_mounts": {"/home/ubuntu/wrpo-ray": "."},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [".venv", "outputs", "**/__pycache__"],
        "rsync_filter": [".gitignore"],
        "initialization_commands": [],
        "setup_commands": SETUP_COMMANDS,
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            f"{NODE_ENV}; ray get-auth-token --generate >/dev/null; ulimit -n 65536; ray start --head --port=6379 "
            "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=127.0.0.1 --num-cpus=0",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"{NODE_ENV}; ulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379",
        ],
    }


def _resources_param(t: NodeType) -> str:
    return json.dumps({t.marker: MARKER_UNITS}) if t.marker else "{}"


def _container(t: NodeType, command: str | None = None) -> dict[str, Any]:
    gpu = {"nvidia.com/gpu": str(t.gpus)} if t.gpus else {}
    limits = {"cpu": str(max(t.cpus, 2)), "memory": f"{max(t.memory_gib - 16, 8)}Gi", **gpu}
    container: dict[str, Any] = {
        "name": "ray", "image": IMAGE,
        "resources": {"limits": limits, "requests": limits},
        "env": [{"name": k, "value": v} for k, v in RAY_NODE_ENV.items()],
        "volumeMounts": [{"name": "shared", "mountPath": "/mnt/shared"}],
    }
    if command:
        container["command"] = ["/bin/bash", "-lc", command]
    return container


def _pod(t: NodeType) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [_container(t)],
        "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "wrpo-ray-shared"}}],
    }
    if t.k8s_selector:
        spec["nodeSelector"] = dict(t.k8s_selector)
    if t.spot:
        spec["tolerations"] = [{"key": "karpenter.sh/capacity-type", "operator": "Equal", "value": "spot",
                                "effect": "NoSchedule"}]
    if t.gpus:
        spec.setdefault("tolerations", []).append({"key": "nvidia.com/gpu", "operator": "Exists",
                                                   "effect": "NoSchedule"})
    return {"spec": spec}


def raycluster() -> dict[str, Any]:
    """A KubeRay `RayCluster` with in-tree autoscaling and the same node types as the launcher config."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "wrpo-ray"},
        "spec": _raycluster_spec(),
    }


def _raycluster_spec() -> dict[str, Any]:
    return {
        "rayVersion": "2.60.0",
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"idleTimeoutSeconds": IDLE_TIMEOUT_MINUTES * 60, "upscalingMode": "Default"},
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "127.0.0.1"},
            "template": _pod(HEAD),
        },
        "workerGroupSpecs": [{
            "groupName": t.name,
            "replicas": t.min_workers, "minReplicas": t.min_workers, "maxReplicas": t.max_workers,
            "rayStartParams": {"num-cpus": str(t.cpus), "num-gpus": str(t.gpus), "resources": _resources_param(t)},
            "template": _pod(t),
        } for t in NODE_TYPES],
    }


def rayjob(config: str = "jobs/configs/paper-llama3-8b.yaml") -> dict[str, Any]:
    """A KubeRay `RayJob` that runs the whole pipeline on its own RayCluster and tears it down at the end."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "wrpo-ray-paper"},
        "spec": {
            "entrypoint": f"cd /home/ray/wrpo-ray && python -m jobs.run --config {config}",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": _raycluster_spec(),
        },
    }


def node_resources_of_launcher(config: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Worker node types and their Ray resources, read back from a launcher config."""
    return {name: dict(t.get("resources", {})) for name, t in config["available_node_types"].items()
            if name != config["head_node_type"]}


def node_resources_of_raycluster(manifest: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Worker groups and their Ray resources, read back from a `RayCluster` (or a `RayJob`'s cluster spec)."""
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    out = {}
    for group in spec["workerGroupSpecs"]:
        params = group["rayStartParams"]
        out[group["groupName"]] = {"CPU": float(params["num-cpus"]), "GPU": float(params.get("num-gpus", 0)),
                                   **json.loads(params.get("resources", "{}"))}
    return out


def cluster_node_types(path: str | Path) -> dict[str, dict[str, float]]:
    """Worker node types of a cluster config file: a launcher YAML or a KubeRay manifest."""
    import yaml

    from wrpo_ray.config import ConfigError

    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--cluster {path}: {e}") from None
    if isinstance(config, dict) and "available_node_types" in config:
        return node_resources_of_launcher(config)
    if isinstance(config, dict) and config.get("kind") in ("RayCluster", "RayJob"):
        return node_resources_of_raycluster(config)
    raise ConfigError(f"--cluster {path}: neither a Ray cluster launcher config nor a KubeRay RayCluster / RayJob")


FILES = {
    "aws.yaml": launcher_config,
    "kuberay/raycluster.yaml": raycluster,
    "kuberay/rayjob.yaml": rayjob,
}
HEADER = "# Rendered by `python -m wrpo_ray.placement cluster` from wrpo_ray/placement.py: edit that, not this.\n"


def render(name: str) -> str:
    import yaml

    return HEADER + yaml.safe_dump(FILES[name](), sort_keys=False, width=120)


def write_all(out_dir: str | Path) -> list[Path]:
    written = []
    for name in FILES:
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(name))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all(sys.argv[1] if len(sys.argv) > 1 else "cluster"):
        print(p)

"""The `gpu` extra resolves: pip finds one set of versions for it, without installing anything.

Ray's LLM extra pins the one vLLM release it is built for; a `vllm` pin that disagrees makes
`pip install -e '.[gpu]'` fail with ResolutionImpossible on every GPU machine, which no CPU test sees.
Needs the package index (skipped when it cannot be reached); reads only metadata, downloads no wheels
beyond what pip needs to resolve.
"""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _gpu_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"]["gpu"]


def _pinned(requirements: list[str], name: str) -> str:
    for line in requirements:
        req = Requirement(line)
        if req.name == name:
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name} should be pinned exactly in the gpu extra: {line}"
            return spec.version
    raise AssertionError(f"{name} is not in the gpu extra")


def _pip(*args: str, timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _index_reachable(cwd: Path) -> bool:
    try:
        return _pip("index", "versions", "vllm", timeout=60, cwd=cwd).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _errors(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("WARNING: Location")]
    return "\n".join(lines[-40:])


@pytest.mark.timeout(900)
def test_gpu_extra_resolves(tmp_path):
    if not _index_reachable(tmp_path):
        pytest.skip("the package index is unreachable (`pip index versions vllm` failed)")
    requirements = _gpu_requirements()
    report = tmp_path / "report.json"
    proc = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *requirements,
                timeout=840, cwd=tmp_path)
    assert proc.returncode == 0, f"the gpu extra does not resolve:\n{_errors(proc.stderr)}"
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    for name in ("vllm", "ray"):
        assert resolved[name] == _pinned(requirements, name), (name, resolved.get(name))
    for line in requirements:
        req = Requirement(line)
        version = resolved[req.name.lower()]
        assert req.specifier.contains(version.split("+")[0], prereleases=True), (line, version)

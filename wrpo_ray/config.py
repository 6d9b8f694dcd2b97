"""One typed config tree for every stage, loaded from YAML.

Every model forbids unknown keys, so a typo fails at load time with the key's dotted path, before any
Ray actor or vLLM engine starts.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TOY_SCHEME = "toy://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SamplingConfig(_Strict):
    """vLLM sampling per source model. Defaults are the paper's (K=5, T=0.8, top-p 0.95)."""

    n: int = Field(5, ge=1, le=64)
    temperature: float = Field(0.8, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, le=32768)


class PoolConfig(_Strict):
    """Ray actor-pool resources for one model."""

    concurrency: int = Field(1, ge=1, le=4096)
    num_cpus: float = Field(1.0, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    batch_size: int = Field(16, ge=1, le=65536)


class ModelConfig(_Strict):
    """A model given as a local directory, a hub id, or a `toy://NAME` built on demand."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.-]*$")
    path: str = Field(min_length=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: str | None = None
    trust_remote_code: bool = False
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    pool: PoolConfig = Field(default_factory=PoolConfig)

    @field_validator("path")
    @classmethod
    def _path_exists_or_hub_id(cls, v: str) -> str:
        if v.startswith(TOY_SCHEME):
            from wrpo_ray.toy.registry import TOY_MODELS

            name = v[len(TOY_SCHEME):]
            if name not in TOY_MODELS:
                raise ValueError(f"unknown toy model {name!r}; known: {sorted(TOY_MODELS)}")
            return v
        if Path(v).exists():
            return str(Path(v).resolve())
        if _HUB_ID.match(v) and not v.startswith((".", "/")):
            return v
        raise ValueError(f"path {v!r} does not exist (and is not a hub id like 'org/model')")


class SourceModelConfig(ModelConfig):
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class RewardConfig(_Strict):
    """Either a reward model (a sequence classifier with one label) or a Python verifier `module:function`.

    A verifier is called as `fn(prompt_row: dict, response: str) -> float`.
    """

    model: ModelConfig | None = None
    verifier: str | None = None
    max_length: int = Field(1024, ge=8)

    @model_validator(mode="after")
    def _exactly_one(self) -> RewardConfig:
        if (self.model is None) == (self.verifier is None):
            raise ValueError("set exactly one of reward.model or reward.verifier")
        if self.verifier is not None:
            resolve_callable(self.verifier)
        return self


class DataConfig(_Strict):
    prompts: str
    max_prompt_chars: int = Field(8000, ge=1)
    strict: bool = False

    @field_validator("prompts")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not Path(v).exists():
            raise ValueError(f"prompts file {v!r} does not exist")
        return str(Path(v).resolve())


class GenerateConfig(_Strict):
    """Everything the generation stage (sources -> rewards -> y_ws) needs."""

    seed: int = 0
    data: DataConfig
    sources: list[SourceModelConfig] = Field(min_length=1)
    reward: RewardConfig
    output_dir: str

    @model_validator(mode="after")
    def _unique_names(self) -> GenerateConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: duplicate names {dupes}")
        return self


class LossSection(_Strict):
    """The preference objective. Unset hyperparameters take the paper's Table 6 values for the objective."""

    objective: Literal["wrpo", "dpo", "ipo", "simpo"] = "wrpo"
    inner: Literal["dpo", "ipo", "simpo"] = "dpo"
    beta: float | None = Field(None, gt=0)
    gamma: float | None = Field(None, ge=0)
    tau: float | None = Field(None, gt=0)
    alpha: float | None = Field(None, ge=0, le=1)
    schedule: Literal["dynamic", "static"] = "dynamic"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    ipo_length_normalize: bool = True
    pair: Literal["on", "hybrid"] = "on"


PAPER_LR = {"dpo": 3e-7, "ipo": 1e-6, "simpo": 6e-7, "wrpo-dpo": 3e-7, "wrpo-ipo": 1e-6, "wrpo-simpo": 6e-7}


class TrainerSettings(_Strict):
    """Ray Train + DeepSpeed settings shared by the SFT and preference stages."""

    policy: ModelConfig | None = None
    data: str | None = None
    output_dir: str | None = None
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    zero_stage: int = Field(3, ge=0, le=3)
    micro_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(2048, ge=8)
    max_prompt_length: int = Field(1800, ge=4)
    logging_steps: int = Field(1, ge=1)
    save_steps: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _prompt_fits(self) -> TrainerSettings:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self

    @field_validator("data")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        """Existence is checked when the stage starts: an earlier stage of the same run may produce it."""
        return None if v is None else str(Path(v).resolve())


class SftConfig(TrainerSettings):
    """Target-SFT: NLL of y_ws on the SFT split of the selections."""

    split_fraction: float = Field(1 / 3, gt=0, le=1)
    learning_rate: float | None = Field(1e-5, gt=0)


class PreferenceTrainConfig(TrainerSettings):
    """WRPO or a pairwise baseline on preference data; reference defaults to the policy (Target-SFT)."""

    reference: ModelConfig | None = None
    loss: LossSection = Field(default_factory=LossSection)
    precompute_reference: bool = True


class EvalConfig(_Strict):
    """Held-out prompts, models to compare, and the judge (default: the generate stage's reward)."""

    prompts: str
    output_dir: str | None = None
    models: list[ModelConfig] = Field(default_factory=list)
    baseline: str = "Target-SFT"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=1, temperature=0.0, top_p=1.0,
                                                                            max_tokens=512))
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    reward: RewardConfig | None = None
    max_prompt_chars: int = Field(8000, ge=1)
    bootstrap_resamples: int = Field(1000, ge=10)
    seed: int = 0

    @field_validator("prompts")
    @classmethod
    def _prompts_exist(cls, v: str) -> str:
        if not Path(v).exists():
            raise ValueError(f"eval prompts {v!r} do not exist")
        return str(Path(v).resolve())


class RunConfig(_Strict):
    """`wrpo-ray run`: the whole pipeline under one output directory."""

    output_dir: str
    baselines: list[Literal["dpo_on", "dpo_hybrid"]] = Field(default_factory=list)


class WrpoConfig(_Strict):
    """Root of a config file; each stage reads its own section."""

    run_name: str = "wrpo"
    run: RunConfig | None = None
    generate: GenerateConfig | None = None
    target: SourceModelConfig | None = None
    sft: SftConfig | None = None
    train: PreferenceTrainConfig | None = None
    eval: EvalConfig | None = None


def resolve_callable(spec: str) -> Any:
    """Import `module:function` and return the callable, with a clear error if it is not one."""
    if ":" not in spec:
        raise ValueError(f"{spec!r} is not of the form 'module:function'")
    module_name, attr = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {spec!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return fn


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> WrpoConfig:
    try:
        return WrpoConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> WrpoConfig:
    """Load a YAML config; `overrides` are `dotted.key=yaml_value` strings applied on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    for item in overrides or []:
        apply_override(raw, item)
    return parse_config(raw, str(path))


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, value = item.split("=", 1)
    node: Any = raw
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    last = parts[-1]
    parsed = yaml.safe_load(value)
    if isinstance(node, list):
        node[int(last)] = parsed
    else:
        node[last] = parsed


def resolve_model_path(path: str) -> str:
    """A loadable model location: `toy://NAME` is built on first use; other paths pass through."""
    if path.startswith(TOY_SCHEME):
        from wrpo_ray.toy.build import toy_model_path

        return str(toy_model_path(path[len(TOY_SCHEME):]))
    return path

"""One typed config tree for every stage, loaded from YAML.

Every model forbids unknown keys, so a typo fails at load time with the key's dotted path, before any
Ray actor or vLLM engine starts.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
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
    """Ray actor-pool resources for one model.

    `concurrency` is a fixed number of actors, or `[min, max]`: Ray Data starts `min` and adds actors up to
    `max` while work is queued and the cluster (or its autoscaler) has room, as spot capacity arrives.
    `resources` are custom Ray resources each actor also asks for; on a cluster from `cluster/`,
    `{wrpo_spot: 1}` places the pool on the spot generation nodes (`wrpo_ray.placement`).
    """

    concurrency: int | tuple[int, int] = 1
    num_cpus: float = Field(1.0, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    batch_size: int = Field(16, ge=1, le=65536)
    resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("concurrency")
    @classmethod
    def _sizes(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        low, high = (v, v) if isinstance(v, int) else v
        if not 1 <= low <= high <= 4096:
            raise ValueError(f"concurrency must be n or [min, max] with 1 <= min <= max <= 4096, got {v}")
        return v

    @field_validator("resources")
    @classmethod
    def _custom_only(cls, v: dict[str, float]) -> dict[str, float]:
        taken = sorted(set(v) & {"CPU", "GPU", "memory"})
        if taken:
            raise ValueError(f"{taken} are set by num_cpus / num_gpus, not by resources")
        if any(x < 0 for x in v.values()):
            raise ValueError("resource amounts must be >= 0")
        return v

    @property
    def max_actors(self) -> int:
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency[1]

    @property
    def min_actors(self) -> int:
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency[0]

    def compute(self):
        """Ray Data's actor-pool strategy for this pool."""
        import ray.data

        if isinstance(self.concurrency, int):
            return ray.data.ActorPoolStrategy(size=self.concurrency)
        return ray.data.ActorPoolStrategy(min_size=self.concurrency[0], max_size=self.concurrency[1])


class ModelConfig(_Strict):
    """A model given as a local directory, a hub id, or a `toy://NAME` built on demand."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.-]*$")
    path: str = Field(min_length=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: str | None = None
    trust_remote_code: bool = False
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    engine_in_actor: bool = True
    """vLLM's engine core runs inside the pool's Ray actor, with no process of its own (generate/engines.py)."""
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
    split: str = Field("train", min_length=1)
    """The split read when `prompts` is a saved `datasets` DatasetDict."""
    max_prompt_chars: int = Field(8000, ge=1)
    strict: bool = False

    @field_validator("prompts")
    @classmethod
    def _exists(cls, v: str) -> str:
        """A local path must exist now; a URI (`s3://...`, any filesystem Ray Data reads) is checked when read."""
        if "://" not in v and not Path(v).exists():
            raise ValueError(f"prompts file {v!r} does not exist")
        return str(Path(v).resolve())


class GenerateConfig(_Strict):
    """Everything the generation stage (sources -> rewards -> y_ws) needs."""

    seed: int = 0
    data: DataConfig
    sources: list[SourceModelConfig] = Field(min_length=1)
    reward: RewardConfig
    output_dir: str
    keep_truncated: bool = False
    """Let samples that stopped at `max_tokens` (finish_reason "length") be selected as y_ws / y_wt / y_l.

    Off by default: an answer cut short would be trained on as if complete, with an end-of-turn appended."""
    wave_gpus: float | None = Field(None, gt=0)
    """The GPUs one wave of source pools may hold at its start: sources run in waves (config order) whose pools'
    minimum sizes, plus the reward pool's, fit this budget; None runs every source at once. Set it to the
    GPUs the generation node type can reach, so a cluster smaller than all pools together never waits for
    capacity it cannot have (`wrpo_ray.generate.waves`)."""

    @model_validator(mode="after")
    def _unique_names(self) -> GenerateConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: duplicate names {dupes}")
        return self

    @model_validator(mode="after")
    def _waves_fit(self) -> GenerateConfig:
        from wrpo_ray.generate.waves import plan_waves

        plan_waves(self)
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
    """IPO on per-token mean log-ratios (TRL's IPO, the default), or on summed log-ratios as the IPO and WRPO
    papers write it. Table 6's tau = 0.01 was tuned with the official code, built on TRL: the mean."""
    pair: Literal["on", "hybrid"] = "on"


PAPER_LR = {"dpo": 3e-7, "ipo": 1e-6, "simpo": 6e-7, "wrpo-dpo": 3e-7, "wrpo-ipo": 1e-6, "wrpo-simpo": 6e-7}


class TrainerSettings(_Strict):
    """Ray Train + DeepSpeed settings shared by the SFT and preference stages."""

    policy: ModelConfig | None = None
    data: str | None = None
    data_split: str = Field("train", min_length=1)
    output_dir: str | None = None
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources of each training worker (and reference actor): `{wrpo_train: 1}` keeps training
    on the on-demand training nodes of a cluster from `cluster/`."""
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
    max_failures: int = Field(3, ge=-1)
    """Worker-group failures (a worker process or its node lost) Ray Train recovers from within one run, each
    time restarting every worker from the latest checkpoint; 0 fails at the first, -1 never gives up."""
    packing: Literal["shared_prefix", "padded"] = "shared_prefix"
    """How a micro-batch reaches the model: `shared_prefix` lays each example's sequences out with the prompt
    once, short examples sharing a row, padding only at a row's end (train/packing.py); `padded` is one
    right-padded row per sequence. Same log-probs; kept for comparison."""
    seed: int = 0
    shuffle: bool = True
    """A fresh order of the rows every epoch, drawn from (seed, epoch); False trains in input order."""

    @model_validator(mode="after")
    def _prompt_fits(self) -> TrainerSettings:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length: {self.max_prompt_length} must be smaller than max_length "
                             f"({self.max_length})")
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
    completion_only_loss: bool = True
    """NLL of the response tokens only (True), or of the whole templated sequence, prompt included (False,
    the official WRPO Target-SFT recipe)."""


class PreferenceTrainConfig(TrainerSettings):
    """WRPO or a pairwise baseline on preference data; reference defaults to the policy (Target-SFT)."""

    reference: ModelConfig | None = None
    loss: LossSection = Field(default_factory=LossSection)
    precompute_reference: bool = True


class EvalConfig(_Strict):
    """Held-out prompts, models to compare, and the judge that scores their answers.

    `judge` is the evaluation's own reward model or verifier. Left unset it falls back to `generate.reward`,
    with a warning when that is a reward model (see `resolve_judge`).
    """

    prompts: str
    prompts_split: str = Field("test", min_length=1)
    """The split read when `prompts` is a saved `datasets` DatasetDict: held-out prompts, `test` by default."""
    output_dir: str | None = None
    models: list[ModelConfig] = Field(default_factory=list)
    baseline: str = "Target-SFT"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=1, temperature=0.0, top_p=1.0,
                                                                            max_tokens=512))
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    judge: RewardConfig | None = None
    max_prompt_chars: int = Field(8000, ge=1)
    bootstrap_resamples: int = Field(1000, ge=10)
    seed: int = 0
    groups: dict[str, list[str]] = Field(default_factory=dict)
    """Models that are one method's training seeds, by method name (`wrpo-ray run` fills it from `run.seeds`):
    differences are taken between methods, seed by seed, with their spread across seeds."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_reward(cls, data: Any) -> Any:
        if isinstance(data, dict) and "reward" in data:
            raise ValueError("eval.reward is now eval.judge")
        return data

    @field_validator("prompts")
    @classmethod
    def _prompts_exist(cls, v: str) -> str:
        if not Path(v).exists():
            raise ValueError(f"eval prompts {v!r} do not exist")
        return str(Path(v).resolve())


class RunConfig(_Strict):
    """`wrpo-ray run`: the whole pipeline under one output directory."""

    output_dir: str
    baselines: list[Literal["dpo_on", "dpo_hybrid", "wrpo_static"]] = Field(default_factory=list)
    """Methods trained besides WRPO, from the same Target-SFT and data: DPO on (x, y_wt, y_l) or on the hybrid pairs
    (x, y_ws, y_l), and WRPO with alpha fixed at `train.loss.alpha` (`wrpo_static`, needs the dynamic schedule)."""
    seeds: list[int] = Field(default_factory=list)
    """Training seeds of the preference stages: WRPO and each baseline are trained once per seed, from the same
    Target-SFT and preference data (so a seed changes the order of the training data, and dropout where the
    model has any), and evaluated as one method. Empty: the `train` section's seed alone."""

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"run.seeds must be distinct, got {seeds}")
        return seeds


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


_FIELD_PREFIX = re.compile(r"^([a-z_]+): (.*)$", re.DOTALL)


def _format_errors(err: ValidationError, source: str) -> str:
    """One line per error, each naming the config and the dotted key.

    A model-level check names the field it is about by starting its message with `field: `; that field
    joins the dotted key (`sft.max_prompt_length`, not `sft`).
    """
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        msg = e["msg"].removeprefix("Value error, ")
        m = _FIELD_PREFIX.match(msg)
        if m:
            loc, msg = [*loc, m[1]], m[2]
        lines.append(f"invalid config {source}: {'.'.join(loc) or '<root>'}: {msg}")
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
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    for item in overrides or []:
        apply_override(raw, item)
    return parse_config(raw, str(path))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `dotted.key=yaml_value` in the raw config tree; list items are addressed by index.

    Every mistake is a `ConfigError` naming the dotted key: no `=`, an empty key part, a value that is not
    YAML, an index that is not a number or is out of range, or a key below a scalar.
    """
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not of the form key.path=value")
    key, value = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {key!r}: empty key part")
    parsed = _parse_override_value(key, value)
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[:depth]), key)
    _assign(node, parts[-1], parsed, ".".join(parts[:-1]), key)


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _parse_override_value(key: str, value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML: {_yaml_problem(e)}") from None


def _list_index(items: list[Any], part: str, parent: str, key: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"--set {key}: {parent} is a list of {len(items)} items; {part!r} is not an index")
    index = int(part)
    if index >= len(items):
        raise ConfigError(f"--set {key}: index {index} is out of range: {parent} has {len(items)} items")
    return index


def _not_a_container(node: Any, parent: str, key: str) -> ConfigError:
    return ConfigError(f"--set {key}: {parent or '<root>'} is a {type(node).__name__} ({node!r}), "
                       "not a mapping or list")


def _child(node: Any, part: str, parent: str, key: str) -> Any:
    """The mapping or list under `part`; a missing or null mapping entry becomes an empty mapping."""
    path = f"{parent}.{part}" if parent else part
    if isinstance(node, list):
        return node[_list_index(node, part, parent, key)]
    if not isinstance(node, dict):
        raise _not_a_container(node, parent, key)
    if node.get(part) is None:
        node[part] = {}
    child = node[part]
    if not isinstance(child, dict | list):
        raise _not_a_container(child, path, key)
    return child


def _assign(node: Any, part: str, value: Any, parent: str, key: str) -> None:
    if isinstance(node, list):
        node[_list_index(node, part, parent, key)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise _not_a_container(node, parent, key)


# --- checks across sections: the judge, `wrpo-ray run`, and `wrpo-ray validate` ---------------------------

RUN_SECTIONS = ("run", "generate", "target", "sft", "train")

SELF_JUDGE_WARNING = ("the eval judge is the reward model that built the training data ({path}): win rates "
                      "flatter every preference method; set eval.judge to a different reward model")


def resolve_judge(cfg: WrpoConfig) -> tuple[RewardConfig, str | None]:
    """The judge of the eval stage, and a warning when it is the reward model that built the training data.

    `eval.judge` wins; unset, the judge falls back to `generate.reward`. A model trained toward a reward model
    and judged by the same one is graded on what it was taught to please, so that case warns (same model
    path). A verifier (`module:function`) is a programmatic check of correctness, ground truth rather than a
    learned preference, so judging with the verifier that built the data does not warn.
    """
    own = cfg.eval.judge if cfg.eval is not None else None
    trained_on = cfg.generate.reward if cfg.generate is not None else None
    judge = own or trained_on
    if judge is None:
        raise ConfigError("eval needs a judge: set eval.judge (or generate.reward)")
    return judge, judge_warning(judge, trained_on)


def judge_warning(judge: RewardConfig, trained_on: RewardConfig | None) -> str | None:
    """The self-judging warning when `judge` is the same reward model as `trained_on`; None otherwise."""
    if trained_on is None or judge.model is None or trained_on.model is None:
        return None
    if judge.model.path.rstrip("/") != trained_on.model.path.rstrip("/"):
        return None
    return SELF_JUDGE_WARNING.format(path=judge.model.path)


def missing_run_sections(cfg: WrpoConfig) -> list[str]:
    """The sections `wrpo-ray run` needs that the config lacks."""
    return [name for name in RUN_SECTIONS if getattr(cfg, name) is None]


def seed_label(label: str, seed: int | str) -> str:
    """The name of one seed's run of a method (stage or model): `wrpo-s1`, `Target-SFT-WRPO-s1`."""
    return f"{label}-s{seed}"


METHOD_LABELS = {"dpo_on": "Target-SFT-DPO", "dpo_hybrid": "Target-SFT-DPO-hybrid",
                 "wrpo_static": "Target-SFT-WRPO-static", "wrpo": "Target-SFT-WRPO"}
"""The model each preference stage of `wrpo-ray run` trains, by stage name."""


def run_methods(run: RunConfig) -> list[tuple[str, str]]:
    """(stage name, model label) of each preference method a run trains: its baselines, then WRPO."""
    return [(name, METHOD_LABELS[name]) for name in (*run.baselines, "wrpo")]


def seed_groups(run: RunConfig) -> dict[str, list[str]]:
    """Each method's models by seed (`eval.groups` of a run with `run.seeds`); empty without seeds."""
    return {label: [seed_label(label, s) for s in run.seeds] for _, label in run_methods(run)} if run.seeds else {}


def run_model_names(cfg: WrpoConfig) -> list[str]:
    """The models `wrpo-ray run` evaluates, in order: Target, Target-SFT, each baseline, WRPO (each seed's)."""
    groups = seed_groups(cfg.run)
    return ["Target", "Target-SFT", *(m for _, label in run_methods(cfg.run) for m in groups.get(label, [label]))]


def run_errors(cfg: WrpoConfig) -> list[str]:
    """What `wrpo-ray run` cannot do with this config, found before any stage runs."""
    errors = [f"`wrpo-ray run` needs a '{section}' section" for section in missing_run_sections(cfg)]
    if errors or cfg.run is None:
        return errors
    if "wrpo_static" in cfg.run.baselines and cfg.train.loss.schedule == "static":
        errors.append("run.baselines has wrpo_static while train.loss.schedule is static: both would train "
                      "the same WRPO")
    if len(set(cfg.run.baselines)) != len(cfg.run.baselines):
        errors.append(f"run.baselines names a method twice: {cfg.run.baselines}")
    if cfg.run.seeds and not cfg.train.shuffle:
        errors.append("run.seeds with train.shuffle false: a seed only changes the order of the training data "
                      "(every run starts from Target-SFT), so every seed would train the same model")
    if cfg.eval is not None:
        names = run_model_names(cfg)
        if cfg.eval.baseline not in names:
            errors.append(f"eval.baseline {cfg.eval.baseline!r} is not a model this run evaluates: {names}")
        if cfg.run.seeds and cfg.eval.groups:
            errors.append("eval.groups is set by `wrpo-ray run` from run.seeds; leave it unset")
    return errors


def require_run_sections(cfg: WrpoConfig) -> None:
    """A `ConfigError` naming every section `wrpo-ray run` needs and the config lacks, and every setting it
    cannot run with (`run_errors`)."""
    errors = run_errors(cfg)
    if errors:
        raise ConfigError("\n".join(errors))


def group_errors(groups: dict[str, list[str]], models: list[str]) -> list[str]:
    """`eval.groups` must name evaluated models, each in one group, under names no model has; groups of more
    than one model must be equally large (their seeds are compared pairwise, in order)."""
    errors = []
    seen: set[str] = set()
    for name, members in groups.items():
        if name in models:
            errors.append(f"eval.groups: group {name!r} has the name of a model")
        for m in members:
            if m not in models:
                errors.append(f"eval.groups.{name}: {m!r} is not one of eval.models")
            if m in seen:
                errors.append(f"eval.groups.{name}: {m!r} is in more than one group")
            seen.add(m)
    sizes = {len(ms) for ms in groups.values() if len(ms) > 1}
    if len(sizes) > 1:
        errors.append(f"eval.groups: groups of several seeds must be equally large, got sizes {sorted(sizes)}")
    return errors


def standalone_eval_errors(ev: EvalConfig) -> list[str]:
    """What `wrpo-ray eval` needs beyond a valid eval section (`wrpo-ray run` fills these in itself)."""
    errors = []
    if not ev.models:
        errors.append("eval.models is empty: list the models to compare")
    elif ev.baseline not in {m.name for m in ev.models}:
        errors.append(f"eval.baseline {ev.baseline!r} is not one of eval.models {[m.name for m in ev.models]}")
    errors += group_errors(ev.groups, [m.name for m in ev.models])
    if ev.output_dir is None:
        errors.append("eval.output_dir is required")
    return errors


@dataclass
class ConfigReport:
    """What `wrpo-ray validate` found: errors stop a run, warnings and notes do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_config(cfg: WrpoConfig) -> ConfigReport:
    """Every check that needs no Ray, no engine and no download, on a config that parsed."""
    report = ConfigReport()
    for check in (_check_run, _check_standalone_trainers, _check_eval, _check_trainer_resources,
                  _check_pools, _check_loss):
        check(cfg, report)
    return report


def _check_run(cfg: WrpoConfig, report: ConfigReport) -> None:
    if cfg.run is None:
        return
    report.errors.extend(f"run: {e}" for e in run_errors(cfg))
    if cfg.eval is None:
        report.notes.append("no eval section: `wrpo-ray run` trains and does not evaluate")


def _check_standalone_trainers(cfg: WrpoConfig, report: ConfigReport) -> None:
    """Without `run`, `wrpo-ray sft` / `train` read their own policy, data and output directory."""
    if cfg.run is not None:
        return
    for name in ("sft", "train"):
        section = getattr(cfg, name)
        if section is None:
            continue
        for key in ("policy", "data", "output_dir"):
            if getattr(section, key) is None:
                report.errors.append(f"{name}.{key} is required for `wrpo-ray {name}`")
        if section.data is not None and not Path(section.data).exists():
            report.warnings.append(f"{name}.data: {section.data} does not exist yet (an earlier stage must "
                                   "write it)")


def _check_eval(cfg: WrpoConfig, report: ConfigReport) -> None:
    if cfg.eval is None:
        return
    if cfg.run is None:
        report.errors.extend(standalone_eval_errors(cfg.eval))
    try:
        _, warning = resolve_judge(cfg)
    except ConfigError as e:
        report.errors.append(str(e))
        return
    if warning:
        report.warnings.append(warning)


def _check_trainer_resources(cfg: WrpoConfig, report: ConfigReport) -> None:
    for name in ("sft", "train"):
        s = getattr(cfg, name)
        if s is None:
            continue
        batch = s.num_workers * s.micro_batch_size * s.gradient_accumulation_steps
        device = f"{s.num_workers} GPUs (one per worker)" if s.use_gpu else "no GPU"
        report.notes.append(f"{name}: {s.num_workers} workers x {s.cpus_per_worker:g} CPUs, {device}; "
                            f"effective batch {batch} = workers x micro batch {s.micro_batch_size} x "
                            f"accumulation {s.gradient_accumulation_steps}")
        if s.save_steps is not None and s.max_steps is not None and s.save_steps > s.max_steps:
            report.warnings.append(f"{name}.save_steps {s.save_steps} > max_steps {s.max_steps}: "
                                   "no checkpoint before the end")


def actor_pools(cfg: WrpoConfig) -> list[tuple[str, PoolConfig, dict[str, Any]]]:
    """`(where, pool, engine_kwargs)` of every actor pool the config starts."""
    pools: list[tuple[str, PoolConfig, dict[str, Any]]] = []
    if cfg.generate is not None:
        pools += [(f"generate.sources.{i}", s.pool, s.engine_kwargs) for i, s in enumerate(cfg.generate.sources)]
        if cfg.generate.reward.model is not None:
            pools.append(("generate.reward.model", cfg.generate.reward.model.pool, {}))
    if cfg.target is not None:
        pools.append(("target", cfg.target.pool, cfg.target.engine_kwargs))
    if cfg.eval is not None:
        pools.append(("eval", cfg.eval.pool, cfg.eval.engine_kwargs))
        if cfg.eval.judge is not None and cfg.eval.judge.model is not None:
            pools.append(("eval.judge.model", cfg.eval.judge.model.pool, {}))
    return pools


def _check_pools(cfg: WrpoConfig, report: ConfigReport) -> None:
    """Note what every pool asks for; warn when an actor reserves fewer GPUs than its engine's tensor-parallel
    degree (Ray would schedule more engines on a node than it has GPUs for)."""
    for where, pool, engine_kwargs in actor_pools(cfg):
        tp = engine_kwargs.get("tensor_parallel_size", 1)
        if pool.num_gpus > 0 and isinstance(tp, int) and tp > pool.num_gpus:
            report.warnings.append(f"{where}: engine_kwargs.tensor_parallel_size {tp} uses {tp} GPUs per actor, "
                                   f"pool.num_gpus reserves {pool.num_gpus:g}")
        if pool.num_gpus > 0:
            report.notes.append(f"{where}: up to {pool.max_actors} actor(s) x {pool.num_gpus:g} GPUs = "
                                f"{pool.max_actors * pool.num_gpus:g} GPUs")


def _check_loss(cfg: WrpoConfig, report: ConfigReport) -> None:
    """Resolve the objective exactly as the training stage will (the paper's Table 6 values for unset ones)."""
    if cfg.train is None:
        return
    from wrpo_ray.train.run import loss_config

    try:
        loss = loss_config(cfg.train)
    except (ValueError, KeyError) as e:
        report.errors.append(f"train.loss: {e}")
        return
    lr = cfg.train.learning_rate or PAPER_LR[loss.name]
    keys = {"dpo": ("beta",), "ipo": ("tau",), "simpo": ("beta", "gamma")}[loss.kind]
    keys += ("alpha",) if loss.objective == "wrpo" else ()
    values = "  ".join(f"{k}={getattr(loss, k):g}" for k in keys)
    report.notes.append(f"train.loss: {loss.name} ({loss.schedule}) {values}  lr={lr:g}")


def resolve_model_path(path: str) -> str:
    """A loadable model location: `toy://NAME` is built on first use; other paths pass through."""
    if path.startswith(TOY_SCHEME):
        from wrpo_ray.toy.build import toy_model_path

        return str(toy_model_path(path[len(TOY_SCHEME):]))
    return path

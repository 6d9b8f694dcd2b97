"""`wrpo-ray run`: the paper's pipeline in one Ray job, each stage persisted under one output directory.

sources -> score -> y_ws -> SFT split + Target-SFT -> target samples -> score -> y_wt / y_l ->
preference quadruples -> reference log-probs + WRPO (and optional DPO baselines) -> evaluation.

A stage that finished writes `stage.json` (its summary and a fingerprint of its config) into its directory;
re-running with the same output directory skips it while the fingerprint matches. Training stages resume
from their latest checkpoint when they were interrupted.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wrpo_ray.config import (
    DataConfig,
    GenerateConfig,
    ModelConfig,
    PreferenceTrainConfig,
    SourceModelConfig,
    WrpoConfig,
    require_run_sections,
    resolve_judge,
    run_methods,
    seed_groups,
    seed_label,
)
from wrpo_ray.data.handoff import build_quadruples, write_target_prompts
from wrpo_ray.data.io import fingerprint, write_json

log = logging.getLogger(__name__)

RUN_DIR = "<run>"
"""How a saved stage summary writes its run's directory."""


class StageRunner:
    """Runs named stages once per fingerprint, recording each stage's summary in `<dir>/stage.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.summaries: dict[str, Any] = {}
        self.fingerprints: dict[str, str] = {}
        self.seconds: dict[str, float | None] = {}

    def __call__(self, name: str, settings: Any, fn: Callable[[], dict[str, Any]],
                 after: tuple[str, ...] = ()) -> dict[str, Any]:
        """Run `fn` unless `name` completed with the same settings after the same upstream stages.

        The fingerprint chains those of the stages named in `after`: a stage whose input was rebuilt
        (a retrained Target-SFT at the same path, say) runs again even though its own settings match.
        Paths under the run's directory are kept relative to it, in the fingerprint and in the saved summary, so
        a run directory moved or copied elsewhere resumes, and so does a stage directory linked from another run.
        """
        marker = self.root / name / "stage.json"
        fp = fingerprint({"settings": self._relative(settings), "after": {d: self.fingerprints[d] for d in after}})
        self.fingerprints[name] = fp
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == fp:
                log.info("stage %s: already complete, skipped", name)
                self.seconds[name] = None
                self.summaries[name] = self._absolute(done["summary"])
                return self.summaries[name]
        log.info("stage %s: running", name)
        t0 = time.perf_counter()
        summary = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        write_json({"fingerprint": fp, "summary": self._relative(summary)}, marker)
        self.summaries[name] = summary
        return summary

    def _relative(self, value: Any) -> Any:
        """`value` with the run directory written `<run>` in every path under it. A stage directory linked from
        another run counts as under this one when named by its resolved path (model paths are resolved)."""
        text = json.dumps(value, default=str)
        linked = [(d.resolve(), f"{RUN_DIR}/{d.name}") for d in self.root.iterdir() if d.is_symlink()] \
            if self.root.is_dir() else []
        for path, name in [*linked, (self.root, RUN_DIR)]:
            text = re.sub(re.escape(json.dumps(str(path))[1:-1]) + r'(?=/|")', name, text)
        return json.loads(text)

    def _absolute(self, value: Any) -> Any:
        return json.loads(json.dumps(value).replace(RUN_DIR, json.dumps(str(self.root))[1:-1]))


def method_train_config(train: PreferenceTrainConfig, method: str) -> PreferenceTrainConfig:
    """The `train` section as the preference method `method` of `wrpo-ray run` trains it (config.METHOD_LABELS)."""
    update = {"dpo_on": {"objective": "dpo", "pair": "on"}, "dpo_hybrid": {"objective": "dpo", "pair": "hybrid"},
              "wrpo_static": {"schedule": "static"}, "wrpo": {}}[method]
    return train.model_copy(update={"loss": train.loss.model_copy(update=update)})


def seed_runs(methods: list[tuple[str, str, PreferenceTrainConfig]], seeds: list[int]
              ) -> list[tuple[str, str, PreferenceTrainConfig]]:
    """(stage, model label, settings) per training run: each method once, or once per seed as `NAME-sSEED`."""
    if not seeds:
        return methods
    return [(seed_label(name, s), seed_label(label, s), train.model_copy(update={"seed": s}))
            for name, label, train in methods for s in seeds]


def run_pipeline(cfg: WrpoConfig) -> dict[str, Any]:
    from wrpo_ray.generate.pipeline import run_generate
    from wrpo_ray.train.run import run_training

    require_run_sections(cfg)
    if cfg.eval is not None:
        _, warning = resolve_judge(cfg)  # no judge at all fails here, before hours of generation and training
        if warning:
            log.warning("%s", warning)
    root = Path(cfg.run.output_dir).resolve()
    stage = StageRunner(root)

    gen_cfg = cfg.generate.model_copy(update={"output_dir": str(root / "sources")})
    stage("sources", gen_cfg.model_dump(), lambda: run_generate(gen_cfg).summary)

    sft_cfg = cfg.sft.model_copy(update={
        "policy": cfg.target, "data": str(root / "sources" / "selections"), "output_dir": str(root / "sft")})
    sft = stage("sft", sft_cfg.model_dump(), lambda: run_training(sft_cfg, "sft"), after=("sources",))
    sft_model = ModelConfig(**{**cfg.target.model_dump(exclude={"sampling"}), "name": "Target-SFT",
                               "path": sft["model_dir"]})

    prompts_dir = root / "target" / "prompts"
    tgt_cfg = GenerateConfig(
        seed=cfg.generate.seed,
        data=DataConfig.model_construct(prompts=str(prompts_dir), max_prompt_chars=cfg.generate.data.max_prompt_chars,
                                        strict=False),
        sources=[SourceModelConfig(**{**sft_model.model_dump(), "sampling": cfg.target.sampling})],
        reward=cfg.generate.reward,
        output_dir=str(root / "target"),
        keep_truncated=cfg.generate.keep_truncated,
    )

    def target_stage() -> dict[str, Any]:
        write_target_prompts(root / "sources" / "selections", prompts_dir, cfg.sft.seed, cfg.sft.split_fraction)
        return run_generate(tgt_cfg).summary

    stage("target", tgt_cfg.model_dump(), target_stage, after=("sft",))
    stage("preference", {}, lambda: build_quadruples(root / "sources" / "selections", root / "target" / "selections",
                                                     root / "preference"), after=("sources", "target"))

    trained = {"Target": ModelConfig(**{**cfg.target.model_dump(exclude={"sampling"}), "name": "Target"}),
               "Target-SFT": sft_model}
    methods = [(name, label, method_train_config(cfg.train, name)) for name, label in run_methods(cfg.run)]
    runs = seed_runs(methods, cfg.run.seeds)
    for name, label, train_cfg in runs:
        train_cfg = train_cfg.model_copy(update={
            "policy": sft_model, "reference": sft_model, "data": str(root / "preference" / "data"),
            "output_dir": str(root / name)})
        summary = stage(name, train_cfg.model_dump(), lambda c=train_cfg: run_training(c, "preference"),
                        after=("preference",))
        trained[label] = ModelConfig(**{**sft_model.model_dump(), "name": label, "path": summary["model_dir"]})

    if cfg.eval is not None:
        metrics = {label: root / name / "metrics.jsonl" for name, label, _ in runs}
        eval_stage(cfg, stage, list(trained.values()), metrics, after=tuple(name for name, _, _ in runs),
                   groups=seed_groups(cfg.run))
    summary = {"output_dir": str(root), "stages": stage.summaries, "seconds": stage.seconds}
    write_json(summary, root / "pipeline.json")
    return summary


def eval_stage(cfg: WrpoConfig, stage: StageRunner, models: list[ModelConfig], metrics_files: dict[str, Path],
               after: tuple[str, ...] = (), groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The eval stage of a run: every trained model, the resolved judge and its warning, under `<root>/eval`.

    The resolved judge is part of the stage's settings, so a different fallback judge re-runs it.
    """
    from wrpo_ray.eval.stage import run_eval

    judge, warning = resolve_judge(cfg)
    eval_cfg = cfg.eval.model_copy(update={"models": models, "output_dir": str(stage.root / "eval"),
                                           "judge": judge, "groups": groups if groups else cfg.eval.groups})
    return stage("eval", eval_cfg.model_dump(),
                 lambda: run_eval(eval_cfg, judge, metrics_files=metrics_files, warning=warning),
                 after=after)


def _runtime_ratio(stages: dict[str, Any]) -> str | None:
    """WRPO's training time against DPO-on's (the paper's Table 8: about 1.16x on 8 GPUs)."""
    def first(name: str) -> tuple[str, dict[str, Any] | None]:  # the method's stage, or its first seed's
        if name in stages:
            return name, stages[name]
        return next(((k, v) for k, v in stages.items() if k.startswith(seed_label(name, ""))), (name, None))

    (wrpo_stage, wrpo), (dpo_stage, dpo) = first("wrpo"), first("dpo_on")
    if wrpo is None or dpo is None:
        return None
    wrpo, dpo = wrpo["seconds"], dpo["seconds"]
    which = f" ({wrpo_stage}, {dpo_stage})" if wrpo_stage != "wrpo" else ""
    line = f"training WRPO / DPO-on{which}: whole stage {wrpo['train']:.0f} s / {dpo['train']:.0f} s"
    if wrpo.get("per_step_median") and dpo.get("per_step_median"):
        w, d = wrpo["per_step_median"], dpo["per_step_median"]
        line += f"; per optimizer step {w:.3f} s / {d:.3f} s = {w / d:.2f}x"
    return line


def format_pipeline_summary(summary: dict[str, Any]) -> str:
    from wrpo_ray.eval.report import format_win_shares
    from wrpo_ray.generate.pipeline import format_summary

    stages = summary["stages"]
    parts = ["== sources ==", format_summary(stages["sources"]), "",
             "== per-source win shares (Table 1) ==", format_win_shares(stages["sources"]["win_shares"])]
    if "preference" in stages:
        p = stages["preference"]
        parts += ["", f"== preference data == {p['quadruples']} quadruples, {p['quarantined']} set aside "
                      "(fewer than two selectable target samples, or all tied), "
                      f"y_ws above y_wt in {p['y_ws_above_y_wt']}"]
    if "eval" in stages:
        parts += ["", "== evaluation (Table 2) ==", stages["eval"]["table"]]
        if stages["eval"].get("plots"):
            parts += ["", "reward dynamics plots: " + ", ".join(stages["eval"]["plots"])]
    if summary.get("seconds"):
        parts += ["", "== time per stage (s; - = already complete, skipped) =="]
        parts += [f"{name:<12}{'-' if sec is None else f'{sec:.0f}':>8}" for name, sec in summary["seconds"].items()]
        runtime = _runtime_ratio(stages)
        if runtime:
            parts.append(runtime)
    parts += ["", f"everything under {summary['output_dir']}"]
    return "\n".join(parts)

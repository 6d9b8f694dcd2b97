"""The fusion study: WRPO against DPO and SFT over seeds, and WRPO with 1, 2 and all sources (the paper's
Tables 2 and 4 and Figure 3, in miniature), on the toy world of `jobs/configs/study.yaml`.

    python benchmarks/fusion_study.py            # or: make study

1. Prompts: `jobs/data/study/` train (3000), validation (200) and test (400), no prompt text twice.
2. Chooses the preference learning rate (one for every method, from `--lrs`) and the alpha schedule on the
   **validation** prompts: one `wrpo-ray run` per learning rate, seed 0, DPO-on and WRPO dynamic and static.
   The runs share their sources, Target-SFT, target samples and preference data (linked stage directories).
3. Trains every method with every seed at that learning rate (the chosen run's directory, so seed 0 is reused)
   and evaluates on the **test** prompts: Target, Target-SFT, DPO-on, DPO-hybrid, WRPO static and dynamic.
4. Runs the pipeline again with the first source and the first two (WRPO, the chosen schedule, every seed),
   and compares them with the all-source WRPO on the same test prompts, paired.
5. Writes `study.md` / `study.json` and the figures to `benchmarks/results/study-<device>-<date>/`.

Each run is a `wrpo-ray run` subprocess with its own log under its output directory; a study interrupted and
started again resumes (finished stages are skipped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from record import environment, machine_line  # noqa: E402

from wrpo_ray.config import METHOD_LABELS, seed_label  # noqa: E402
from wrpo_ray.eval.report import markdown_table  # noqa: E402

CONFIG = ROOT / "jobs" / "configs" / "study.yaml"
SHARED_STAGES = ("sources", "sft", "target", "preference")
SELECTION_METHODS = ["dpo_on", "wrpo_static"]  # with WRPO (dynamic), which every run trains
TEST_METHODS = ["dpo_on", "dpo_hybrid", "wrpo_static"]
WRPO = {"dynamic": METHOD_LABELS["wrpo"], "static": METHOD_LABELS["wrpo_static"]}


def run_config(base: dict, root: Path, eval_prompts: str, *, lr: float, seeds: list[int], baselines: list[str],
               sources: int | None = None, schedule: str | None = None) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg["run"].update(output_dir=str(root), seeds=seeds, baselines=baselines)
    cfg["generate"]["output_dir"] = str(root / "sources")
    if sources is not None:
        cfg["generate"]["sources"] = cfg["generate"]["sources"][:sources]
    cfg["train"]["learning_rate"] = lr
    if schedule is not None:
        cfg["train"]["loss"]["schedule"] = schedule
    cfg["eval"]["prompts"] = eval_prompts
    return cfg


def wrpo_ray_run(cfg: dict, name: str) -> dict[str, Any]:
    """`wrpo-ray run` on `cfg` (written next to its output), echoing its console; the eval stage's summary."""
    root = Path(cfg["run"]["output_dir"])
    root.mkdir(parents=True, exist_ok=True)
    path = root / "study-run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"\n=== {name}: wrpo-ray run --config {path}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wrpo_ray.cli", "run", "--config", str(path)], check=True)
    print(f"=== {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads((root / "eval" / "stage.json").read_text())["summary"]


def link_shared_stages(owner: Path, root: Path) -> None:
    """Let run `root` reuse `owner`'s finished stages that do not depend on the preference settings."""
    root.mkdir(parents=True, exist_ok=True)
    for stage in SHARED_STAGES:
        link = root / stage
        if not link.exists():
            link.symlink_to(owner / stage, target_is_directory=True)


def method_scores(summary: dict, label: str, seeds: list[int]) -> dict[str, Any]:
    """Win rate against the eval's baseline and accuracy of one method: per seed, mean and sd across seeds."""
    reports = summary["reports"]
    names = [seed_label(label, s) for s in seeds] if seed_label(label, seeds[0]) in reports else [label]
    wr = [reports[n]["win_rate"] for n in names]
    acc = [reports[n]["overall_accuracy"] for n in names]
    return {"models": names, "win_rate": wr, "accuracy": acc, "win_rate_mean": statistics.fmean(wr),
            "win_rate_sd": statistics.stdev(wr) if len(wr) > 1 else None, "accuracy_mean": statistics.fmean(acc),
            "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else None,
            "skills": {s: statistics.fmean(reports[n]["accuracy"][s] for n in names)
                       for s in reports[names[0]]["accuracy"]}}


def choose(validation: dict[float, dict]) -> tuple[float, str, list[list[str]]]:
    """The learning rate with the best mean validation win rate over the preference methods, then the schedule
    whose WRPO did better at that rate; and the table of what was compared."""
    rows, best = [], {}
    for lr, summary in validation.items():
        scores = {label: method_scores(summary, label, [0])
                  for label in (METHOD_LABELS["dpo_on"], WRPO["static"], WRPO["dynamic"])}
        best[lr] = statistics.fmean(s["win_rate_mean"] for s in scores.values())
        rows += [[f"{lr:g}", label, f"{s['win_rate_mean']:.1f}", f"{s['accuracy_mean']:.1f}"]
                 for label, s in scores.items()]
    lr = max(best, key=lambda k: best[k])
    scores = {k: method_scores(validation[lr], label, [0])["win_rate_mean"] for k, label in WRPO.items()}
    schedule = "static" if scores["static"] > scores["dynamic"] else "dynamic"
    return lr, schedule, rows


def sources_comparison(runs: dict[str, tuple[Path, str]], seeds: list[int], resamples: int) -> dict[str, Any]:
    """WRPO (and Target-SFT) of the runs with 1, 2 and all sources on the same test prompts, paired: each
    run's (directory, WRPO label) by its number of sources; its answers under `NAME (k)`, against the
    all-source run's Target (the same model, greedy)."""
    import pyarrow.parquet as pq

    from wrpo_ray.eval.differences import method_difference
    from wrpo_ray.eval.report import format_differences_markdown
    from wrpo_ray.eval.stage import records_from_samples
    from wrpo_ray.eval.winrate import build_report

    label = "WRPO"
    records, groups, order = {}, {}, ["Target"]
    for k, (root, run_label) in runs.items():
        run_records = records_from_samples(pq.read_table(str(root / "eval" / "generations" / "samples")).to_pylist())
        if k == "all":
            records["Target"] = run_records["Target"]
        records[f"Target-SFT ({k})"] = run_records["Target-SFT"]
        names = {seed_label(run_label, s): f"{seed_label(label, s)} ({k})" for s in seeds}
        records.update({new: run_records[old] for old, new in names.items()})
        groups[f"{label} ({k})"] = list(names.values())
        order += [f"Target-SFT ({k})", *names.values()]
    reports = build_report({m: records[m] for m in order}, "Target", n_resamples=resamples)
    diffs = []
    keys = list(runs)
    for i, k in enumerate(keys):
        diffs.append(method_difference(f"{label} ({k})", f"Target-SFT ({k})", "Target", records, groups,
                                       n_resamples=resamples))
        diffs += [method_difference(f"{label} ({k})", f"{label} ({j})", "Target", records, groups,
                                    n_resamples=resamples) for j in keys[:i]]
    rows = []
    for k in keys:
        for name in [f"Target-SFT ({k})", f"{label} ({k})"]:
            members = groups.get(name, [name])
            wr = [reports[m].win_rate for m in members]
            acc = [reports[m].overall_accuracy for m in members]
            rows.append([name, _mean_sd(wr), _mean_sd(acc),
                         *(f"{statistics.fmean(reports[m].accuracy[s] for m in members):.1f}"
                           for s in sorted(reports[members[0]].accuracy))])
    skills = sorted(reports[order[1]].accuracy)
    table = markdown_table(["method (sources)", "WR vs Target % (mean ± sd over seeds)", "Acc %", *skills], rows)
    raw = {"reports": {m: r.to_dict() for m, r in reports.items()}, "differences": [d.to_dict() for d in diffs]}
    return {"table": table, "differences": format_differences_markdown(diffs), "raw": raw}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def dynamics_figure(root: Path, labels: dict[str, str], seeds: list[int], out_png: Path) -> Path:
    """The paper's Figure 3 side by side: implicit rewards per logged step of each method, mean over seeds."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from wrpo_ray.eval.report import read_metrics

    keys = [("rewards/source", "y_ws"), ("rewards/target", "y_wt"), ("rewards/chosen", "chosen"),
            ("rewards/rejected", "y_l")]
    fig = Figure(figsize=(4.2 * len(labels), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(labels), i + 1) for i in range(len(labels))]
    for ax, (stage, label) in zip(axes, labels.items(), strict=True):
        runs = [read_metrics(root / seed_label(stage, s) / "metrics.jsonl") for s in seeds]
        steps = [r["step"] for r in runs[0]]
        for key, name in keys:
            if not all(key in row for run in runs for row in run):
                continue
            values = np.array([[row[key] for row in run[:len(steps)]] for run in runs])
            ax.plot(steps, values.mean(axis=0), label=name, linewidth=1.4)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("implicit reward (mean over seeds)")
    fig.savefig(out_png, dpi=110)
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/study", help="the study's runs (default %(default)s)")
    parser.add_argument("--results", help="where the record goes (default benchmarks/results/study-cpu-<date>)")
    parser.add_argument("--lrs", default="3e-5,1e-4,3e-4", help="preference learning rates to choose from")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--test-prompts", default="jobs/data/study/test.jsonl",
                        help="held-out prompts to report on; the config's eval.prompts are the validation ones")
    args = parser.parse_args(argv)
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    out = Path(args.out).resolve()
    results = Path(args.results or ROOT / "benchmarks" / "results" / f"study-cpu-{time.strftime('%Y-%m-%d')}")
    results.mkdir(parents=True, exist_ok=True)
    env = environment()
    t0 = time.perf_counter()
    base = yaml.safe_load(CONFIG.read_text())
    validation_prompts, test_prompts = base["eval"]["prompts"], args.test_prompts

    validation, owner = {}, None
    for lr in lrs:
        root = out / f"lr-{lr:g}"
        if owner is not None:
            link_shared_stages(owner, root)
        cfg = run_config(base, root, validation_prompts, lr=lr, seeds=[0], baselines=SELECTION_METHODS)
        validation[lr] = wrpo_ray_run(cfg, f"validation, preference lr {lr:g}")
        shutil.copytree(root / "eval", out / "validation" / f"lr-{lr:g}", dirs_exist_ok=True)
        owner = owner or root
    lr, schedule, selection_rows = choose(validation)
    print(f"\n=== chosen on the validation prompts: preference lr {lr:g}, WRPO alpha schedule {schedule}")

    main_root = out / f"lr-{lr:g}"
    test = wrpo_ray_run(run_config(base, main_root, test_prompts, lr=lr, seeds=seeds, baselines=TEST_METHODS),
                        "test, every method and seed")
    labels = ["Target", "Target-SFT", *(METHOD_LABELS[m] for m in (*TEST_METHODS, "wrpo"))]
    methods = {label: method_scores(test, label, seeds) for label in labels}

    n_sources = len(base["generate"]["sources"])
    source_runs: dict[str, tuple[Path, str]] = {}
    for k in range(1, n_sources):
        root = out / f"sources-{k}"
        cfg = run_config(base, root, test_prompts, lr=lr, seeds=seeds, baselines=[], sources=k, schedule=schedule)
        cfg["eval"]["baseline"] = "Target"
        wrpo_ray_run(cfg, f"test, WRPO ({schedule}) with {k} source{'s' if k > 1 else ''}")
        source_runs[str(k)] = (root, METHOD_LABELS["wrpo"])
    source_runs["all"] = (main_root, WRPO[schedule])
    sources = sources_comparison(source_runs, seeds, base["eval"]["bootstrap_resamples"])

    figure = dynamics_figure(main_root, {m: METHOD_LABELS[m] for m in (*TEST_METHODS, "wrpo")}, seeds,
                             results / "reward_dynamics.png")
    shutil.copy(main_root / "eval" / "results.md", results / "test_results.md")
    seconds = time.perf_counter() - t0
    payload = {"environment": env, "seconds": round(seconds), "args": vars(args), "chosen_lr": lr,
               "chosen_schedule": schedule, "validation": {str(k): v["reports"] for k, v in validation.items()},
               "methods": methods, "test_differences": test["differences"], "sources": sources["raw"]}
    (results / "study.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    method_rows = [[label, _mean_sd(s["win_rate"]), _mean_sd(s["accuracy"]),
                    *(f"{v:.1f}" for v in s["skills"].values())] for label, s in methods.items()]
    skills = list(methods["Target"]["skills"])
    markdown = "\n\n".join([
        "# Fusion study (`make study`)", machine_line(env) + f"\n- whole study: {seconds / 60:.1f} min",
        f"Prompts: {base['generate']['data']['prompts']} (train), {validation_prompts} (validation, to choose "
        f"settings), {test_prompts} (test, reported). Seeds {seeds}.",
        "## Chosen on the validation prompts (seed 0)",
        markdown_table(["preference lr", "method", "WR vs Target %", "Acc %"], selection_rows),
        f"Chosen: preference learning rate **{lr:g}** (best mean win rate of the three), alpha schedule "
        f"**{schedule}** (the better WRPO at that rate).",
        "## Test prompts: every method, every seed (Table 2)",
        markdown_table(["method", "WR vs Target % (mean ± sd over seeds)", "Acc %", *skills], method_rows),
        "Per model, with bootstrap intervals, and the paired differences between methods "
        "(seed i with seed i; `*`: the interval excludes 0): [test_results.md](test_results.md)",
        "## Number of sources (Table 4), test prompts",
        sources["table"], sources["differences"],
        "## Reward dynamics (Figure 3)", "![reward dynamics](reward_dynamics.png)",
    ]) + "\n"
    (results / "study.md").write_text(markdown)
    print(f"\nrecorded: {results / 'study.md'} ({figure.name}); study took {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

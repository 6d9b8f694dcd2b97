"""Training time of WRPO against DPO-on on the same data, policy and trainer settings (the paper's Table 8).

WRPO runs three responses per prompt through the policy (y_ws, y_wt, y_l) where DPO runs two (y_wt, y_l),
so its forward and backward do 1.5x the tokens; the paper measures 212-216 min against 183-186 min for
DPO on 8 GPUs (about 1.16x). This script trains both with `wrpo_ray.train.run.run_training` (Ray Train +
DeepSpeed, the reference log-probs precomputed) on one preference dataset, in the order DPO, WRPO, WRPO,
DPO, ... so that drift in machine load hits both alike, and reports for each run:

- `seconds_per_step`: the median over optimizer steps of the loop's own per-step wall time
  (`metrics.jsonl`), the first step (warm-up) left out;
- `fit_s`: the whole `TorchTrainer.fit()` (worker start-up, DeepSpeed set-up, the final HF save).

Example (the demo's data; about 8 minutes on 2 CPU cores)::

    make demo     # or any run that wrote outputs/tiny-cpu/preference/data and outputs/tiny-cpu/sft/model
    python benchmarks/bench_wrpo_vs_dpo.py --config jobs/configs/tiny-cpu.yaml \\
        --data outputs/tiny-cpu/preference/data --policy outputs/tiny-cpu/sft/model --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from wrpo_ray.config import ModelConfig, load_config

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def train_once(base, objective: str, out: Path) -> dict:
    from wrpo_ray.train.run import run_training

    loss = base.loss.model_copy(update={"objective": objective, "pair": "on"})
    cfg = base.model_copy(update={"loss": loss, "output_dir": str(out), "save_steps": None})
    summary = run_training(cfg, "preference")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"objective": objective, "fit_s": summary["seconds"]["train"], "steps": len(steps),
            "seconds_per_step": summary["seconds"]["per_step_median"],
            "all_seconds_per_step": [s["seconds_per_step"] for s in steps[1:]], "rows": summary["rows"]["trained"]}


def environment() -> dict:
    import importlib.metadata as metadata

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "load_average": tuple(round(x, 2) for x in os.getloadavg()),
        "versions": {n: metadata.version(n) for n in ("torch", "ray", "deepspeed", "transformers", "wrpo-ray")},
    }


def summarize(runs: list[dict]) -> dict:
    by = {o: [r for r in runs if r["objective"] == o] for o in ("dpo", "wrpo")}
    step = {o: statistics.median(r["seconds_per_step"] for r in rs) for o, rs in by.items()}
    fit = {o: statistics.median(r["fit_s"] for r in rs) for o, rs in by.items()}
    return {"seconds_per_step": step, "fit_s": fit,
            "ratio_step": step["wrpo"] / step["dpo"], "ratio_fit": fit["wrpo"] / fit["dpo"]}


def render_markdown(payload: dict) -> str:
    env, s = payload["environment"], payload["summary"]
    lines = [
        "# WRPO vs DPO-on training time",
        "",
        f"- command: `{payload['command']}`",
        f"- machine: {env['cpu']}, {env['cpu_count']} cores; {env['platform']}; load average at start "
        f"{env['load_average']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"- date: {env['date']}",
        f"- settings: {payload['settings']}",
        "",
        "| | DPO-on | WRPO | WRPO / DPO-on |",
        "|---|---:|---:|---:|",
        f"| seconds per optimizer step (median) | {s['seconds_per_step']['dpo']:.2f} "
        f"| {s['seconds_per_step']['wrpo']:.2f} | {s['ratio_step']:.2f}x |",
        f"| whole `fit()` (median), s | {s['fit_s']['dpo']:.1f} | {s['fit_s']['wrpo']:.1f} | {s['ratio_fit']:.2f}x |",
        "",
        "Raw runs, in order:",
        "",
    ]
    for r in payload["runs"]:
        lines.append(f"- {r['objective']}: fit {r['fit_s']:.1f} s, {r['steps']} steps, median "
                     f"{r['seconds_per_step']:.2f} s/step; per step "
                     + ", ".join(f"{t:.2f}" for t in r["all_seconds_per_step"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a config whose `train` section gives the trainer settings")
    p.add_argument("--data", required=True, help="preference data (this project's format or the paper's)")
    p.add_argument("--policy", required=True, help="policy and reference model directory (Target-SFT)")
    p.add_argument("--pairs", type=int, default=1, help="DPO-WRPO-WRPO-DPO rounds (default 1: two runs each)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--write", action="store_true", help="record under benchmarks/results/")
    p.add_argument("--out", help="results prefix (default: results/wrpo-vs-dpo-<device>-<date>)")
    args = p.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    policy = ModelConfig(**{**(cfg.target.model_dump(exclude={"sampling"}) if cfg.target else {}),
                            "name": "policy", "path": args.policy})
    base = cfg.train.model_copy(update={"policy": policy, "reference": policy, "data": args.data})
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for objective in ("dpo", "wrpo", "wrpo", "dpo"):
                runs.append(train_once(base, objective, Path(tmp) / f"{i}-{len(runs)}-{objective}"))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "all_seconds_per_step"}), flush=True)
    payload = {
        "environment": environment(),
        "command": "python benchmarks/bench_wrpo_vs_dpo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: base.model_dump()[k] for k in ("num_workers", "zero_stage", "micro_batch_size",
                                                       "gradient_accumulation_steps", "epochs", "max_length",
                                                       "use_gpu")},
        "runs": runs,
        "summary": summarize(runs),
    }
    s = payload["summary"]
    print(f"WRPO / DPO-on: {s['ratio_step']:.2f}x per optimizer step, {s['ratio_fit']:.2f}x whole fit()")
    if args.write or args.out:
        device = "cuda" if base.use_gpu else "cpu"
        prefix = Path(args.out) if args.out else RESULTS_DIR / f"wrpo-vs-dpo-{device}-{dt.date.today().isoformat()}"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        prefix.with_suffix(".md").write_text(render_markdown(payload))
        print(f"recorded: {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

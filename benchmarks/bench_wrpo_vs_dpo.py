"""Training time of WRPO against DPO-on on the same data, policy and trainer settings (the paper's Table 8), with
unshared padded batches and with prefix-shared packed rows (`train.packing`), and where each stage's time goes.

WRPO runs three responses per prompt through the policy (y_ws, y_wt, y_l) where DPO runs two (y_wt, y_l),
so its forward and backward do 1.5x the tokens; the paper measures 212-216 min against 183-186 min for
DPO on 8 GPUs (about 1.16x). This script trains both with `wrpo_ray.train.run.run_training` (Ray Train +
DeepSpeed, the reference log-probs precomputed) on one preference dataset, each objective with each packing,
in an order that is reversed every round so that drift in machine load hits every variant alike, and reports
for each run:

- `seconds_per_step`: the median over optimizer steps of the loop's own per-step wall time
  (`metrics.jsonl`), the first step (warm-up) left out;
- the stage's time by phase (`summary.json`'s `seconds`): tokenizing, the reference log-probs, the whole
  `TorchTrainer.fit()` split into Ray Train's worker start-up, imports, model load, DeepSpeed set-up, the data
  shard, optimizer steps, checkpoints and what follows the workers, and the model export.

Goal: prefix-shared WRPO <= 1.0x unshared DPO per optimizer step.

Examples::

    python benchmarks/bench_wrpo_vs_dpo.py --write     # the demo's trainer settings, toy data (~5 minutes)
    python benchmarks/bench_wrpo_vs_dpo.py --config jobs/configs/tiny-cpu.yaml \\
        --data outputs/tiny-cpu/preference/data --policy outputs/tiny-cpu/sft/model --write   # after `make demo`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from wrpo_ray.config import ModelConfig, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import environment, machine_line, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [("dpo", "padded"), ("wrpo", "padded"), ("wrpo", "shared_prefix"), ("dpo", "shared_prefix")]
BASELINE = ("dpo", "padded")
PHASES = ("tokenize", "reference", "worker_group_start", "imports", "load_model", "deepspeed_init", "data_shard",
          "steps", "checkpoints", "after_workers", "export")


def train_once(base, objective: str, packing: str, out: Path) -> dict:
    from wrpo_ray.train.run import run_training

    loss = base.loss.model_copy(update={"objective": objective, "pair": "on"})
    cfg = base.model_copy(update={"loss": loss, "packing": packing, "output_dir": str(out), "save_steps": None})
    summary = run_training(cfg, "preference")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = summary["seconds"]
    phases = {k: seconds.get(k, seconds["train_phases"].get(k)) for k in PHASES}
    return {"objective": objective, "packing": packing, "fit_s": seconds["train"], "steps": len(steps),
            "seconds_per_step": seconds["per_step_median"], "phases": phases,
            "stage_s": seconds["tokenize"] + seconds["reference"] + seconds["train"] + seconds["export"],
            "all_seconds_per_step": [s["seconds_per_step"] for s in steps[1:]], "rows": summary["rows"]["trained"]}


def toy_data(path: Path, rows: int) -> Path:
    from wrpo_ray.toy.task import make_preference_rows, write_jsonl

    write_jsonl(make_preference_rows(rows, seed=11), path)
    return path


def summarize(runs: list[dict]) -> dict:
    def key(r: dict) -> str:
        return f"{r['objective']}/{r['packing']}"

    names = sorted({key(r) for r in runs})
    step = {n: statistics.median(r["seconds_per_step"] for r in runs if key(r) == n) for n in names}
    stage = {n: statistics.median(r["stage_s"] for r in runs if key(r) == n) for n in names}
    phases = {n: {p: statistics.median(r["phases"][p] or 0.0 for r in runs if key(r) == n) for p in PHASES}
              for n in names}
    base = "/".join(BASELINE)
    return {"seconds_per_step": step, "stage_s": stage, "phases": phases,
            "step_vs_padded_dpo": {n: step[n] / step[base] for n in names},
            "wrpo_over_dpo_padded": step["wrpo/padded"] / step["dpo/padded"],
            "wrpo_over_dpo_shared": step["wrpo/shared_prefix"] / step["dpo/shared_prefix"]}


def render_markdown(payload: dict) -> str:
    s = payload["summary"]
    names = list(s["seconds_per_step"])
    goal = s["step_vs_padded_dpo"]["wrpo/shared_prefix"]
    lines = [
        "# WRPO vs DPO-on training: per optimizer step and per stage, padded and prefix-shared",
        "",
        f"- command: `{payload['command']}`",
        machine_line(payload["environment"]),
        f"- settings: {payload['settings']}",
        f"- data: {payload['data']}; policy: {payload['policy']}",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" + "|---:" * len(names) + "|",
        "| seconds per optimizer step (median) | " + " | ".join(f"{s['seconds_per_step'][n]:.3f}" for n in names)
        + " |",
        "| per step / padded DPO | " + " | ".join(f"{s['step_vs_padded_dpo'][n]:.2f}x" for n in names) + " |",
        "| whole stage, s (median) | " + " | ".join(f"{s['stage_s'][n]:.1f}" for n in names) + " |",
    ]
    lines += [f"| {p}, s | " + " | ".join(f"{s['phases'][n][p]:.2f}" for n in names) + " |" for p in PHASES]
    lines += [
        "",
        f"- WRPO / DPO-on per step at equal settings: padded {s['wrpo_over_dpo_padded']:.2f}x, prefix-shared "
        f"{s['wrpo_over_dpo_shared']:.2f}x (the paper: about 1.16x)",
        f"- **prefix-shared WRPO / padded DPO per step: {goal:.2f}x** (goal <= 1.0x: "
        f"{'met' if goal <= 1.0 else 'not met'})",
        "",
        "Raw runs, in order:",
        "",
    ]
    for r in payload["runs"]:
        lines.append(f"- {r['objective']}/{r['packing']}: stage {r['stage_s']:.1f} s, fit {r['fit_s']:.1f} s, "
                     f"{r['steps']} steps, median {r['seconds_per_step']:.3f} s/step; per step "
                     + ", ".join(f"{t:.3f}" for t in r["all_seconds_per_step"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "jobs/configs/tiny-cpu.yaml"),
                   help="a config whose `train` section gives the trainer settings (default: the demo's)")
    p.add_argument("--data", help="preference data (this project's format or the paper's; default: toy "
                                  "quadruples, --rows of them)")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--policy", help="policy and reference model (default: the config's target)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of the four variants (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--write", action="store_true", help="record under benchmarks/results/")
    p.add_argument("--out", help="results prefix (default: results/wrpo-vs-dpo-<device>-<date>)")
    args = p.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    target = cfg.target.model_dump(exclude={"sampling"}) if cfg.target else {}
    policy = ModelConfig(**{**target, "name": "policy", "path": args.policy or target["path"]})
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(toy_data(Path(tmp) / "toy-preference.jsonl", args.rows))
        base = cfg.train.model_copy(update={"policy": policy, "reference": policy, "data": data})
        for i in range(args.rounds):
            for objective, packing in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
                runs.append(train_once(base, objective, packing, Path(tmp) / f"{len(runs)}-{objective}-{packing}"))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "all_seconds_per_step"}), flush=True)
    payload = {
        "environment": environment(("torch", "ray", "deepspeed", "transformers", "wrpo-ray")),
        "command": "python benchmarks/bench_wrpo_vs_dpo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: base.model_dump()[k] for k in ("num_workers", "zero_stage", "micro_batch_size",
                                                       "gradient_accumulation_steps", "epochs", "max_length",
                                                       "use_gpu")},
        "data": args.data or f"{args.rows} toy quadruples (wrpo_ray.toy.task.make_preference_rows)",
        "policy": policy.path,
        "runs": runs,
        "summary": summarize(runs),
    }
    s = payload["summary"]
    print("per step / padded DPO: " + ", ".join(f"{k} {v:.2f}x" for k, v in s["step_vs_padded_dpo"].items()))
    if args.write or args.out:
        write_result(args.out, f"wrpo-vs-dpo-{'cuda' if base.use_gpu else 'cpu'}", payload, render_markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

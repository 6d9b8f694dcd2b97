"""The `wrpo-ray` command."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import time
from collections.abc import Iterator

from wrpo_ray.config import (
    ConfigError,
    check_config,
    load_config,
    require_run_sections,
    resolve_judge,
    standalone_eval_errors,
)
from wrpo_ray.data.prompts import InputError
from wrpo_ray.runtime import Stopped

# What a second run of the same command does with what a stopped one left (every stage writes under its output dir).
ON_RERUN = {
    "generate": "resumes: committed batches are reused, only missing (prompt, source) pairs are generated",
    "sft": "resumes from the latest checkpoint",
    "train": "resumes from the latest checkpoint (reference log-probs are computed again)",
    "run": "skips the stages already complete and resumes the one that was stopped",
    "eval": "evaluates again from the start (answers are not kept until every model is judged)",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set generate.output_dir=/tmp/out (repeatable)")


_output_dir: str | None = None


@contextlib.contextmanager
def _run_logs(output_dir: str | None) -> Iterator[None]:
    """Full logs of the command under `<output_dir>/logs/`, and where they are, said at the end."""
    from wrpo_ray.console import link_ray_logs, log_to_file
    from wrpo_ray.runtime import session_dir

    global _output_dir
    _output_dir = output_dir
    logs = log_to_file(output_dir) if output_dir else None
    try:
        yield
    finally:
        if logs is not None:
            link = link_ray_logs(logs, session_dir())
            where = f"full logs: {logs / 'driver.log'}"
            print(where + (f"; every worker's and engine's: {link}/" if link else ""), file=sys.stderr)


def _section(cfg, name: str):
    section = getattr(cfg, name)
    if section is None:
        raise ConfigError(f"the config has no '{name}' section")
    return section


def cmd_generate(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.strict:
        overrides.append("generate.data.strict=true")
    if args.output_dir:
        overrides.append(f"generate.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    _section(cfg, "generate")
    from wrpo_ray.generate.pipeline import format_summary, run_generate

    with _run_logs(cfg.generate.output_dir):
        result = run_generate(cfg.generate)
    print(format_summary(result.summary))
    return 0


def _train_command(section: str):
    def run(args: argparse.Namespace) -> int:
        cfg = _section(load_config(args.config, args.overrides), section)
        from wrpo_ray.train.run import run_training

        with _run_logs(cfg.output_dir):
            summary = run_training(cfg, "sft" if section == "sft" else "preference")
        print(format_train_summary(summary))
        return 0

    return run


def format_train_summary(s: dict) -> str:
    rows, steps = s["rows"], s["steps"]
    lines = [
        f"{s['stage']} ({s['objective']}): rows in {rows['in']}  trained {rows['trained']}  "
        f"quarantined {rows['quarantined']}  unused per epoch {rows['unused_per_epoch']}",
        f"truncated: {s['truncated']['prompts']} prompts, {s['truncated']['responses']} responses",
        f"steps {steps['completed']}/{steps['total']}  reference: {s['reference']}",
        format_stage_seconds(s["seconds"]),
        _format_restarts(s),
        "final metrics: " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(s["final_metrics"].items())),
        f"model: {s['model_dir']}",
        f"checkpoints: {s['checkpoints']}",
        f"tensorboard: {s['tensorboard']}",
    ]
    return "\n".join(lines)


def format_stage_seconds(seconds: dict) -> str:
    """Where the stage's time went: the driver's phases, then `fit()` by phase (worker.PhaseClock)."""
    driver = [f"{k} {seconds[k]}" for k in ("tokenize", "reference", "train", "export") if k in seconds]
    phases = seconds.get("train_phases") or {}
    line = "seconds: " + ", ".join(driver)
    if phases:
        line += " (train: " + ", ".join(f"{k} {v}" for k, v in phases.items()) + ")"
    return line


def _format_restarts(s: dict) -> str:
    if not s.get("restarts"):
        return "restarts: 0"
    steps = s["restarted_from_steps"]
    where = "step" if len(steps) == 1 else "steps"
    return f"restarts: {s['restarts']} (worker group lost, resumed from {where} {', '.join(map(str, steps))})"


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from wrpo_ray.pipeline import format_pipeline_summary, run_pipeline

    require_run_sections(cfg)
    with _run_logs(cfg.run.output_dir):
        summary = run_pipeline(cfg)
    print(format_pipeline_summary(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    eval_cfg = _section(cfg, "eval")
    errors = standalone_eval_errors(eval_cfg)
    if errors:
        raise ConfigError("\n".join(errors))
    judge, warning = resolve_judge(cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    from wrpo_ray.eval.stage import run_eval

    with _run_logs(eval_cfg.output_dir):
        summary = run_eval(eval_cfg, judge, warning=warning)
    print(summary["table"])
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Every check of `check_config` on the parsed config, without starting Ray or loading a model."""
    cfg = load_config(args.config, args.overrides)
    report = check_config(cfg)
    if args.cluster:
        from wrpo_ray.placement import cluster_node_types, unplaceable

        report.errors += unplaceable(cfg, cluster_node_types(args.cluster))
    out = sys.stderr if report.errors else sys.stdout
    for line in report.errors:
        print(f"error: {line}", file=out)
    if not report.errors:
        print(f"config OK: {args.config}")
    for line in report.warnings:
        print(f"warning: {line}", file=out)
    for line in report.notes:
        print(f"note: {line}", file=out)
    return 2 if report.errors else 0


def cmd_build_toy(args: argparse.Namespace) -> int:
    from wrpo_ray.toy.build import build_all, toy_model_path

    if args.names:
        built = {n: toy_model_path(n, args.root) for n in args.names}
    else:
        built = build_all(args.root)
    for name, path in built.items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wrpo-ray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every library's logs and progress bars on the console (default: log files)")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="source generation, reward scoring and selection of y_ws")
    _add_config_args(g)
    g.add_argument("--strict", action="store_true", help="fail on any bad prompt row instead of quarantining")
    g.add_argument("--output-dir", help="override generate.output_dir")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("run", help="the whole fusion pipeline in one Ray job")
    _add_config_args(r)
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="generate with each model on held-out prompts, judge, report win rates")
    _add_config_args(e)
    e.set_defaults(func=cmd_eval)

    v = sub.add_parser("validate", help="check a config (sections, paths, judge, resources, loss) without Ray")
    _add_config_args(v)
    v.add_argument("--cluster", metavar="FILE",
                   help="also check that every pool and trainer fits a node type of this cluster config "
                        "(a Ray cluster launcher YAML, or a KubeRay RayCluster / RayJob manifest)")
    v.set_defaults(func=cmd_validate)

    for name, section, text in [("sft", "sft", "Target-SFT: NLL of y_ws on the SFT split"),
                                ("train", "train", "WRPO / DPO / IPO / SimPO training on preference data")]:
        p = sub.add_parser(name, help=text)
        _add_config_args(p)
        p.set_defaults(func=_train_command(section))

    t = sub.add_parser("build-toy", help="build the tiny models of the embedded default")
    t.add_argument("--root", help="directory (default: $WRPO_RAY_TOY_DIR or ~/.cache/wrpo-ray/toy)")
    t.add_argument("names", nargs="*", help="models to build (default: all)")
    t.set_defaults(func=cmd_build_toy)
    return parser


def stopped(command: str, argv: list[str], reason: BaseException, seconds: float) -> int:
    """Ctrl-C or a stop signal: leave Ray (a local instance goes with everything it started), say what was kept
    and how to resume; exit 128 + the signal's number, as a shell reports a process its signal ended."""
    from wrpo_ray.runtime import disconnect

    for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal while leaving ends the driver at once
        signal.signal(sig, signal.SIG_DFL)
    signum = reason.signum if isinstance(reason, Stopped) else signal.SIGINT
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    t0 = time.monotonic()
    disconnect()
    kept = f"work committed so far is kept under {_output_dir}" if _output_dir else "nothing was written"
    print(f"\nstopped by {name} after {seconds:.0f} s (Ray left in {time.monotonic() - t0:.1f} s); {kept}.\n"
          f"The same command {ON_RERUN.get(command, 'runs it again')}:\n  wrpo-ray {shlex.join(argv)}",
          file=sys.stderr)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    from wrpo_ray.console import setup_console

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_console(args.verbose)
    started = time.monotonic()
    try:
        return args.func(args)
    except (ConfigError, InputError) as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped) as e:
        return stopped(args.command, argv, e, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())

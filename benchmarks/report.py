"""One page for a `make bench` run: every goal with its measured ratio, and one figure.

Reads the results the benchmarks wrote into one directory (`packing`, `wrpo-vs-dpo`, `trl-dpo`, `generation`,
`logprobs`, `vllm-layout`, each `.json`), writes `summary.md` and `summary.png` beside them. A benchmark whose
file is missing is left out of both.

    python benchmarks/report.py benchmarks/results/bench-cpu-2026-11-29
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import machine_line  # noqa: E402


def load(directory: Path) -> dict[str, dict]:
    names = ("packing", "wrpo-vs-dpo", "trl-dpo", "generation", "logprobs", "vllm-layout")
    return {n: json.loads((directory / f"{n}.json").read_text()) for n in names
            if (directory / f"{n}.json").is_file()}


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def goal_rows(r: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(benchmark, goal, measured, met) for every goal the issue sets that these results measure."""
    rows = []
    if "wrpo-vs-dpo" in r:
        s = r["wrpo-vs-dpo"]["summary"]
        x = s["step_vs_padded_dpo"]["wrpo/shared_prefix"]
        rows.append(("training stage (Ray Train + ZeRO-3)", "prefix-shared WRPO <= 1.0x padded DPO per step",
                     f"{x:.2f}x", verdict(x <= 1.0)))
        rows.append(("training stage", "WRPO / DPO at equal settings (paper: 1.16x)",
                     f"padded {s['wrpo_over_dpo_padded']:.2f}x, prefix-shared {s['wrpo_over_dpo_shared']:.2f}x", "-"))
    if "packing" in r:
        packed = [x for x in r["packing"]["results"] if x["objective"] == "wrpo" and x["packing"] == "shared_prefix"]
        ok = [x["shape"] for x in packed if x["vs_padded_dpo"] <= 1.0]
        rows.append(("one micro-batch, by prompt:response length", "prefix-shared WRPO <= 1.0x padded DPO",
                     ", ".join(f"{x['shape']} {x['vs_padded_dpo']:.2f}x" for x in packed),
                     f"{len(ok)} of {len(packed)} shapes"))
    if "trl-dpo" in r:
        res = r["trl-dpo"]["results"]["shared_prefix"]
        rows.append(("DPO step against TRL's DPOTrainer", ">= 1.5x TRL's tokens/s at <= 0.5x its peak memory",
                     f"{res['speedup_vs_trl']:.2f}x tokens/s, {res['memory_vs_trl']:.2f}x memory",
                     verdict(res["speedup_vs_trl"] >= 1.5 and res["memory_vs_trl"] <= 0.5)))
    if "generation" in r:
        s = r["generation"]["summary"]
        rows.append(("generation: Ray Data pools against bare vLLM", ">= 0.9x bare vLLM's tokens/s after start-up",
                     f"{s['ratio_after_start']:.2f}x", verdict(s["ratio_after_start"] >= 0.9)))
        if "two_over_one_plan" in s:
            rows.append(("generation: two pools on two slots", "about the time of one",
                         f"{s['two_over_one_plan']:.2f}x one pool's plan", "-"))
    if "logprobs" in r:
        for shape, t, m in kernel_ratios(r["logprobs"]):
            rows.append((f"log-prob kernel, {shape}", "no slower than TRL's chunked kernel, no more memory",
                         f"{t:.2f}x time, {m:.2f}x memory", verdict(t <= 1.0 and m <= 1.0)))
    return rows


def kernel_ratios(payload: dict) -> list[tuple[str, float, float]]:
    by_shape: dict[str, dict[str, dict]] = {}
    for x in payload["results"]:
        if x["status"] == "ok":
            s = x["shape"]
            by_shape.setdefault(f"N={s['n']} H={s['h']} V={s['v']}", {})[x["method"]] = x
    out = []
    for shape, m in by_shape.items():
        if "wrpo_ray" in m and "trl_chunked" in m:
            out.append((shape, m["wrpo_ray"]["median_time_s"] / m["trl_chunked"]["median_time_s"],
                        m["wrpo_ray"]["transient_bytes"] / m["trl_chunked"]["transient_bytes"]))
    return out


def render_markdown(r: dict[str, dict], figure: str | None) -> str:
    env = next(iter(r.values()))["environment"]
    lines = ["# `make bench`: every goal, measured", "", machine_line(env), "",
             "| benchmark | goal | measured | goal met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in goal_rows(r)]
    if "wrpo-vs-dpo" in r:
        s = r["wrpo-vs-dpo"]["summary"]
        lines += ["", "Where a training stage's time goes (seconds, median per variant):", "",
                  "| phase | " + " | ".join(s["phases"]) + " |", "|---" + "|---:" * len(s["phases"]) + "|"]
        phases = next(iter(s["phases"].values()))
        lines += [f"| {p} | " + " | ".join(f"{v[p]:.1f}" for v in s["phases"].values()) + " |" for p in phases]
    if "generation" in r:
        s = r["generation"]["summary"]
        lines += ["", f"Generation, one tiny source, {r['generation']['prompts']}: bare vLLM start-up "
                      f"{s['bare_init_s']:.1f} s + generation {s['bare_generate_s']:.1f} s; `wrpo-ray generate` "
                      f"{s['stage_wall_s']:.1f} s in all, of which the plan {s['stage_plan_s']:.1f} s "
                      f"({s['stage_in_engine_s']:.1f} s inside `LLM.generate`)."]
    if "vllm-layout" in r:
        med = r["vllm-layout"]["median"]
        lines += ["", "vLLM engine start-up and generation by process layout (s): "
                  + "; ".join(f"{m}: {v['init_s']:.1f} / {v['generate_s']:.2f}" for m, v in med.items())]
    lines += ["", "Each benchmark's own page, with every raw number: "
              + ", ".join(f"[{n}]({n}.md)" for n in r)]
    if figure:
        lines += ["", f"![make bench]({figure})"]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, dict], path: Path) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [n for n in ("wrpo-vs-dpo", "packing", "trl-dpo", "generation", "logprobs") if n in r]
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.2 * cols, 4.2 * rows))
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, name in zip(axes, panels, strict=False):
        globals()[f"_plot_{name.replace('-', '_')}"](ax, r[name])
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def _plot_wrpo_vs_dpo(ax, payload: dict) -> None:
    ratios = payload["summary"]["step_vs_padded_dpo"]
    ax.bar(range(len(ratios)), list(ratios.values()), color=["#999", "#4a7", "#c84", "#48c"][: len(ratios)])
    ax.set_xticks(range(len(ratios)), [k.replace("/", "\n") for k in ratios], fontsize=8)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_title("training stage: s/step vs padded DPO", fontsize=10)


def _plot_packing(ax, payload: dict) -> None:
    shapes = list(dict.fromkeys(x["shape"] for x in payload["results"]))
    for objective, packing, style in (("dpo", "padded", "o--"), ("dpo", "shared_prefix", "o-"),
                                      ("wrpo", "padded", "s--"), ("wrpo", "shared_prefix", "s-")):
        ys = [next(x["median_s"] for x in payload["results"] if x["shape"] == s and x["objective"] == objective
                   and x["packing"] == packing) * 1e3 for s in shapes]
        ax.plot(range(len(shapes)), ys, style, label=f"{objective} {packing}")
    ax.set_xticks(range(len(shapes)), shapes, fontsize=8, rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("ms per micro-batch step")
    ax.set_title("growth with prompt:response length", fontsize=10)
    ax.legend(fontsize=7)


def _plot_trl_dpo(ax, payload: dict) -> None:
    res = payload["results"]
    names = [n for n in ("shared_prefix", "padded") if n in res]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [res[n]["speedup_vs_trl"] for n in names], 0.4, label="tokens/s vs TRL")
    ax.bar([i + 0.2 for i in x], [res[n]["memory_vs_trl"] for n in names], 0.4, label="peak memory vs TRL")
    ax.axhline(1.5, color="g", lw=0.8, ls="--")
    ax.axhline(0.5, color="r", lw=0.8, ls="--")
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_title("DPO step vs TRL DPOTrainer", fontsize=10)
    ax.legend(fontsize=7)


def _plot_generation(ax, payload: dict) -> None:
    s = payload["summary"]
    ax.bar(0, s["bare_init_s"], color="#bbb", label="start-up")
    ax.bar(0, s["bare_generate_s"], bottom=s["bare_init_s"], color="#4a7", label="generation")
    ready = s.get("stage_engines_ready_s") or s["bare_init_s"]
    ax.bar(1, ready, color="#bbb")
    ax.bar(1, s["stage_after_start_s"], bottom=ready, color="#c84", label="plan after start-up")
    ax.bar(1, s["stage_wall_s"] - s["stage_plan_s"], bottom=s["stage_plan_s"], color="#88c",
           label="outside the plan")
    ax.set_xticks([0, 1], ["bare vLLM", "wrpo-ray generate"], fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("generation, one source", fontsize=10)
    ax.legend(fontsize=7)


def _plot_logprobs(ax, payload: dict) -> None:
    ratios = kernel_ratios(payload)
    x = range(len(ratios))
    ax.bar([i - 0.2 for i in x], [t for _, t, _ in ratios], 0.4, label="time vs TRL chunked")
    ax.bar([i + 0.2 for i in x], [m for _, _, m in ratios], 0.4, label="memory vs TRL chunked")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(list(x), [s.replace(" ", "\n") for s, _, _ in ratios], fontsize=7)
    ax.set_title("log-prob kernel vs TRL's", fontsize=10)
    ax.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory", type=Path)
    args = p.parse_args(argv)
    results = load(args.directory)
    if not results:
        p.error(f"no benchmark results in {args.directory}")
    figure = "summary.png" if plot(results, args.directory / "summary.png") else None
    text = render_markdown(results, figure)
    (args.directory / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

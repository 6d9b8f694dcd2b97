"""Peak transient memory and forward+backward time of per-token log-prob implementations.

Task ``logprobs``: per-token log-probs of labels from hidden states [N, H] and an lm_head weight [V, H], then
backward with a distinct upstream gradient per token. Implementations:

* ``naive``: ``(h @ W.T).float().log_softmax(-1).gather(...)``, the reference of the ratios (and, where
  ``trl_chunked`` ran, a second set of ratios to it);
* ``trl``: TRL's ``selective_log_softmax`` on the full logits;
* ``trl_chunked``: TRL's ``trl.kernels.ChunkedLogProbFunction`` (log-probs only, TRL's chunk width), the fused
  LM head that TRL's DPOTrainer uses since 1.16 (PyTorch tiles on CPU, Triton on GPU);
* ``liger_flce``: Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss(reduction="none")`` (Triton, CUDA only);
* ``torch_lce``: ``torch.nn.functional.linear_cross_entropy(..., reduction="none",
  options=nn.LinearCrossEntropyOptions())`` where the installed torch has it;
* ``wrpo_ray``: ``wrpo_ray.kernels.linear_logprobs``.

Task ``dpo``: the sigmoid DPO loss of B (chosen, rejected) pairs of T tokens each, fixed reference log-probs
(zero), forward+backward; ``naive_dpo``, ``wrpo_ray_dpo`` (this project's op + sequence sums) and
``liger_dpo`` (Liger-Kernel's chunked ``LigerFusedLinearDPOLoss``; not compiled on CPU).

Memory: the peak of bytes held by tensors allocated during one forward+backward, minus the log-probs and
gradients it returns (the same for every implementation), so inputs and outputs do not count. On CUDA it
comes from ``torch.cuda.max_memory_allocated``; on CPU from the allocation and free events that
``torch.profiler`` (``profile_memory=True``) records for every tensor, summed in time order. The returned
gradients are subtracted even when the peak comes before they exist, which favours implementations whose
peak is in the middle of backward (the naive ones).

Time: wall time of forward+backward (CUDA synchronised; the process CPU time is recorded alongside, as
a hint of how much other load slowed a run), after a warm-up call at a smaller vocabulary;
fastest and median of ``--repeats`` rounds that interleave the methods, so that load from other processes
hits them alike (all runs are recorded). Each shape runs in its own process, all methods of a shape in that
process, naive first.

Examples::

    python benchmarks/bench_logprobs.py --quick --write            # CPU, 20-40 minutes on 2 cores
    python benchmarks/bench_logprobs.py --small --write            # naive, trl_chunked, wrpo_ray; ~1.5 minutes
    python benchmarks/bench_logprobs.py --device cuda --write      # GPU grid, writes benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402

RESULTS_DIR = record.RESULTS_DIR
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOGPROB_METHODS = ["naive", "trl", "trl_chunked", "liger_flce", "torch_lce", "wrpo_ray"]
SMALL_METHODS = ["naive", "trl_chunked", "wrpo_ray"]
# The peer every ``--small`` ratio is also taken against: TRL's fused LM head.
TRL_PEER = "trl_chunked"
DPO_METHODS = ["naive_dpo", "liger_dpo", "wrpo_ray_dpo"]
DPO_BETA = 0.1


@dataclass
class Shape:
    task: str
    n: int
    h: int
    v: int
    dtype: str
    seq_len: int = 512

    @property
    def label(self) -> str:
        return f"{self.task} N={self.n} H={self.h} V={self.v} {self.dtype}"


@dataclass
class Result:
    shape: Shape
    method: str
    status: str = "ok"
    times_s: list[float] = field(default_factory=list)
    cpu_times_s: list[float] = field(default_factory=list)
    transient_bytes: int | None = None
    peak_bytes: int | None = None
    returned_bytes: int | None = None
    max_abs_logp_diff_vs_naive: float | None = None
    rel_grad_h_diff_vs_naive: float | None = None

    @property
    def time_s(self) -> float | None:
        return min(self.times_s) if self.times_s else None

    @property
    def median_time_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None


def cpu_shapes(quick: bool) -> list[Shape]:
    shapes = [
        Shape("logprobs", 2048, 256, 128256, "fp32"),
        Shape("logprobs", 2048, 256, 128256, "bf16"),
        Shape("logprobs", 2048, 256, 32000, "fp32"),
        Shape("logprobs", 1024, 1024, 152064, "fp32"),
        Shape("dpo", 2048, 256, 128256, "fp32"),
    ]
    if quick:
        return shapes
    for v in (32000, 128256):
        shapes.append(Shape("logprobs", 1024, 1024, v, "fp32"))
    shapes += [
        Shape("logprobs", 1024, 1024, 152064, "bf16"),
        Shape("logprobs", 512, 4096, 128256, "fp32"),
        Shape("logprobs", 512, 4096, 152064, "bf16"),
    ]
    return shapes


def small_shapes() -> list[Shape]:
    """``--small``: three fp32 shapes that run in about 1.5 minutes on 2 CPU cores."""
    return [Shape("logprobs", n, 256, v, "fp32") for n, v in ((512, 32000), (2048, 32000), (512, 128256))]


def cuda_shapes(quick: bool) -> list[Shape]:
    if quick:
        shapes = [Shape("logprobs", 4096, h, v, "bf16", 2048) for h in (1024, 4096) for v in (32000, 128256, 152064)]
        shapes += [
            Shape("logprobs", 4096, 4096, 128256, "fp32", 2048),
            Shape("logprobs", 16384, 4096, 128256, "bf16", 2048),
            Shape("dpo", 8192, 4096, 128256, "bf16", 2048),
        ]
        return shapes
    shapes = [
        Shape("logprobs", n, h, v, dtype, 2048)
        for n in (4096, 16384)
        for h in (1024, 4096)
        for v in (32000, 128256, 152064)
        for dtype in ("bf16", "fp32")
    ]
    return shapes + [Shape("dpo", 8192, 4096, 128256, "bf16", 2048)]


# ---------------------------------------------------------------------------------------------- methods
def make_inputs(shape: Shape, device: str, vocab: int | None = None, seed: int = 0):
    vocab = vocab or shape.v
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dtype = DTYPES[shape.dtype]
    hidden = torch.randn(shape.n, shape.h, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, shape.h, generator=gen) / shape.h**0.5).to(device, dtype).requires_grad_()
    labels = torch.randint(0, vocab, (shape.n,), generator=gen).to(device)
    upstream = torch.randn(shape.n, generator=gen).to(device)
    return hidden, weight, labels, upstream


def _naive_logps(hidden, weight, labels):
    from wrpo_ray.kernels.reference import naive_linear_logprobs

    return naive_linear_logprobs(hidden, weight, labels, compute_dtype=None)


def _trl_logps(hidden, weight, labels, seq_len):
    from trl.trainer.utils import selective_log_softmax

    batch = hidden.shape[0] // seq_len if hidden.shape[0] % seq_len == 0 else 1
    logits = (hidden @ weight.t()).view(batch, -1, weight.shape[0])
    return selective_log_softmax(logits, labels.view(batch, -1)).reshape(-1).float()


def _trl_chunked_logps(hidden, weight, labels):
    """TRL's fused LM head kernel as ``add_fused_lm_head`` calls it, asking for the log-probs only."""
    import trl.trainer.utils as trl_utils
    from trl.kernels import ChunkedLogProbFunction

    chunk_size = getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    logps = ChunkedLogProbFunction.apply(hidden, weight, None, labels, 1.0, chunk_size, None, 1.0, ())[0]
    return logps.float()


def _liger_logps(hidden, weight, labels):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, hidden, labels)
    return -(loss[0] if isinstance(loss, tuple) else loss).float()


def _torch_lce_logps(hidden, weight, labels):
    import torch.nn.functional as F
    from torch import nn

    loss = F.linear_cross_entropy(hidden, weight, labels, reduction="none", options=nn.LinearCrossEntropyOptions())
    return -loss.float()


def _wrpo_logps(hidden, weight, labels):
    from wrpo_ray.kernels import linear_logprobs

    return linear_logprobs(hidden, weight, labels)


def _dpo_loss(seq_logps):
    chosen, rejected = seq_logps.chunk(2)
    return -torch.nn.functional.logsigmoid(DPO_BETA * (chosen - rejected)).mean()


def _naive_dpo(hidden, weight, labels, seq_len):
    return _dpo_loss(_naive_logps(hidden, weight, labels).view(-1, seq_len).sum(-1))


def _wrpo_dpo(hidden, weight, labels, seq_len):
    return _dpo_loss(_wrpo_logps(hidden, weight, labels).view(-1, seq_len).sum(-1))


def _liger_dpo(hidden, weight, labels, seq_len):
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    loss_fn = LigerFusedLinearDPOLoss(beta=DPO_BETA, use_ref_model=False, compiled=hidden.is_cuda)
    out = loss_fn(weight, hidden.view(-1, seq_len, hidden.shape[-1]), labels.view(-1, seq_len))
    return out[0] if isinstance(out, tuple) else out


def unavailable_reason(method: str, device: str) -> str | None:
    needs = {"trl": "trl", "trl_chunked": "trl", "liger_flce": "liger_kernel", "liger_dpo": "liger_kernel"}
    if method in needs:
        try:
            __import__(needs[method])
        except ImportError:
            return f"skipped: {needs[method]} not installed (pip install -e '.[bench]')"
    if method == "trl_chunked":
        try:
            from trl.kernels import ChunkedLogProbFunction  # noqa: F401
        except ImportError:
            return "skipped: this trl has no trl.kernels.ChunkedLogProbFunction (TRL >= 1.16)"
    if method == "liger_flce" and device != "cuda":
        return "skipped: Liger's fused linear cross-entropy is a Triton kernel (CUDA only)"
    if method == "torch_lce" and not hasattr(torch.nn.functional, "linear_cross_entropy"):
        return "skipped: this torch has no nn.functional.linear_cross_entropy"
    return None


def method_fn(method: str, shape: Shape) -> Callable:
    """A function (hidden, weight, labels, upstream) -> (log-probs or loss, grad_hidden, grad_weight)."""
    logps_fn = {
        "naive": _naive_logps,
        "trl": lambda h, w, y: _trl_logps(h, w, y, shape.seq_len),
        "trl_chunked": _trl_chunked_logps,
        "liger_flce": _liger_logps,
        "torch_lce": _torch_lce_logps,
        "wrpo_ray": _wrpo_logps,
    }
    loss_fn = {"naive_dpo": _naive_dpo, "wrpo_ray_dpo": _wrpo_dpo, "liger_dpo": _liger_dpo}
    if method in logps_fn:

        def run(hidden, weight, labels, upstream):
            logps = logps_fn[method](hidden, weight, labels)
            grad_h, grad_w = torch.autograd.grad(logps, [hidden, weight], upstream)
            return logps.detach(), grad_h, grad_w
    else:

        def run(hidden, weight, labels, upstream):
            loss = loss_fn[method](hidden, weight, labels, shape.seq_len)
            grad_h, grad_w = torch.autograd.grad(loss, [hidden, weight])
            return loss.detach().reshape(1), grad_h, grad_w

    return run


# ------------------------------------------------------------------------------------------- measuring
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, args, device: str) -> tuple[float, float, tuple]:
    """(wall seconds, CPU seconds of this process, output) of one call."""
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn(*args)
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def peak_bytes(fn: Callable, args, device: str) -> tuple[int, tuple]:
    """Peak bytes of tensors allocated during ``fn(*args)`` and still or ever alive, relative to its start."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(*args)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, out
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(*args)
    return profiled_peak(prof), out


def profiled_peak(prof) -> int:
    """The peak of tensor bytes a CPU `torch.profiler` run with `profile_memory=True` saw allocated, relative to
    its start: its allocation and free events summed in time order (exact and repeatable, where RSS is not)."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_shape(shape: Shape, methods: list[str], device: str, repeats: int, max_seconds: float) -> list[Result]:
    """All methods for one shape, in this process: a warm-up each, then ``repeats`` timed rounds that
    interleave the methods (so load from other processes hits them alike), then one memory run each.
    A method whose timed run takes over ``max_seconds`` is not timed again."""
    inputs = make_inputs(shape, device)
    warm_inputs = make_inputs(shape, device, vocab=min(shape.v, 8192), seed=1)
    results = {m: Result(shape, m) for m in methods}
    fns = {}
    for method in methods:
        reason = unavailable_reason(method, device)
        if reason:
            results[method].status = reason
            continue
        fns[method] = method_fn(method, shape)
        try:
            fns[method](*warm_inputs)
        except Exception as exc:  # a peer failing on a shape is a result, not a crash
            _fail(results[method], fns, exc)
    for _ in range(repeats):
        for method in list(fns):
            result = results[method]
            if result.times_s and result.times_s[-1] > max_seconds:
                continue
            try:
                elapsed, cpu_elapsed, out = timed(fns[method], inputs, device)
            except Exception as exc:
                _fail(result, fns, exc)
                continue
            del out
            result.times_s.append(elapsed)
            result.cpu_times_s.append(cpu_elapsed)
    naive_out = None
    for method in list(fns):
        result = results[method]
        try:
            result.peak_bytes, out = peak_bytes(fns[method], inputs, device)
        except Exception as exc:
            _fail(result, fns, exc)
            continue
        result.returned_bytes = _nbytes(out)
        result.transient_bytes = max(0, result.peak_bytes - result.returned_bytes)
        if method.startswith("naive"):
            naive_out = (out[0].float(), out[1].float())
        elif naive_out is not None:
            result.max_abs_logp_diff_vs_naive = (out[0].float() - naive_out[0]).abs().max().item()
            result.rel_grad_h_diff_vs_naive = (
                (out[1].float() - naive_out[1]).norm() / naive_out[1].norm().clamp_min(1e-30)
            ).item()
        del out
        print(
            f"  {shape.label} {method}: {fmt_time(result.time_s)}, {fmt_mib(result.transient_bytes)}",
            file=sys.stderr,
            flush=True,
        )
    return list(results.values())


def _fail(result: Result, fns: dict, exc: Exception) -> None:
    result.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    fns.pop(result.method, None)


# ------------------------------------------------------------------------------------------- reporting
def fmt_time(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def fmt_mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f} MiB"


def _time_ratio(r: Result, ref: Result) -> str:
    return f"{r.time_s / ref.time_s:.2f}x ({r.median_time_s / ref.median_time_s:.2f}x)"


def table(results: list[Result]) -> str:
    """One row per (shape, method); ratios against naive, and against ``trl_chunked`` where it ran."""
    naive = {r.shape.label: r for r in results if r.method.startswith("naive") and r.status == "ok"}
    peer = {r.shape.label: r for r in results if r.method == TRL_PEER and r.status == "ok"}
    peer_header = peer_rule = ""
    if peer:
        peer_header = f" time / {TRL_PEER}, fastest (median) | memory / {TRL_PEER} |"
        peer_rule = "---|---|"
    lines = [
        "| shape | method | fwd+bwd time, fastest (median) | time / naive, fastest (median) | transient memory "
        f"| naive / method memory |{peer_header} max abs logp diff vs naive | rel grad_h diff vs naive | status |",
        f"|---|---|---|---|---|---|{peer_rule}---|---|---|",
    ]
    for r in results:
        ref = naive.get(r.shape.label)
        time_ratio = mem_ratio = "-"
        if ref and r.time_s is not None:
            time_ratio = _time_ratio(r, ref)
        if ref and r.transient_bytes is not None:
            mem_ratio = f"{ref.transient_bytes / max(r.transient_bytes, 1):.1f}x"
        peer_cells = ""
        if peer:
            ref = peer.get(r.shape.label)
            peer_time = peer_mem = "-"
            if ref and r.time_s is not None:
                peer_time = _time_ratio(r, ref)
            if ref and r.transient_bytes is not None:
                peer_mem = f"{r.transient_bytes / max(ref.transient_bytes, 1):.2f}x"
            peer_cells = f" {peer_time} | {peer_mem} |"
        time = "-" if r.time_s is None else f"{fmt_time(r.time_s)} ({fmt_time(r.median_time_s)})"
        diff = "-" if r.max_abs_logp_diff_vs_naive is None else f"{r.max_abs_logp_diff_vs_naive:.2e}"
        gdiff = "-" if r.rel_grad_h_diff_vs_naive is None else f"{r.rel_grad_h_diff_vs_naive:.2e}"
        lines.append(
            f"| {r.shape.label} | {r.method} | {time} | {time_ratio} | {fmt_mib(r.transient_bytes)} "
            f"| {mem_ratio} |{peer_cells} {diff} | {gdiff} | {r.status} |"
        )
    return "\n".join(lines)


def peer_summary(results: list[Result]) -> str:
    """Per shape, ``wrpo_ray`` against TRL's kernel; the goal is no slower at no more transient memory."""
    peer = {r.shape.label: r for r in results if r.method == TRL_PEER and r.status == "ok"}
    lines = []
    for r in results:
        ref = peer.get(r.shape.label)
        if r.method != "wrpo_ray" or ref is None or r.time_s is None or r.transient_bytes is None:
            continue
        fastest, median = r.time_s / ref.time_s, r.median_time_s / ref.median_time_s
        memory = r.transient_bytes / max(ref.transient_bytes, 1)
        if fastest <= 1 and median <= 1:
            speed = "no slower"
        elif fastest > 1 and median > 1:
            speed = "slower"
        else:
            speed = f"{'no slower' if fastest <= 1 else 'slower'} by the fastest run, "
            speed += f"{'no slower' if median <= 1 else 'slower'} by the median"
        lines.append(
            f"- {r.shape.label}: time / {TRL_PEER} {fastest:.2f}x fastest, {median:.2f}x median ({speed}); "
            f"transient memory {fmt_mib(r.transient_bytes)} against {fmt_mib(ref.transient_bytes)} "
            f"= {memory:.2f}x ({'no more' if memory <= 1 else 'more'})"
        )
    if not lines:
        return ""
    return (
        f"## wrpo_ray against TRL's kernel (`{TRL_PEER}`)\n\n"
        "Goal: no slower than TRL's kernel at no more transient memory (both ratios at most 1.00x).\n\n"
        + "\n".join(lines)
        + "\n"
    )


def environment(device: str) -> dict:
    return dict(record.environment(device=device), torch_threads=torch.get_num_threads())


def write_results(results: list[Result], env: dict, prefix: Path, args: argparse.Namespace) -> None:
    payload = {
        "environment": dict(env, load_average_end=record.load_average()),
        "command": "python benchmarks/bench_logprobs.py " + " ".join(sys.argv[1:]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": [dict(asdict(r), time_s=r.time_s, median_time_s=r.median_time_s) for r in results],
    }
    record.write_result(prefix, "", payload, render_markdown(payload))


def render_markdown(payload: dict) -> str:
    env, args = payload["environment"], payload["args"]
    results = []
    for raw in payload["results"]:
        fields = {k: v for k, v in raw.items() if k in Result.__dataclass_fields__}
        results.append(Result(**dict(fields, shape=Shape(**raw["shape"]))))
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    summary = peer_summary(results)
    summary = summary + "\n" if summary else ""
    machine = env.get("gpu") or f"{env['cpu']}, {env['cpu_count']} cores"
    raw_lines = "\n".join(
        f"- {r.shape.label} {r.method}: wall {', '.join(f'{t:.2f}' for t in r.times_s)} s; "
        f"process CPU {', '.join(f'{t:.2f}' for t in r.cpu_times_s)} s"
        for r in results
        if r.times_s
    )
    return (
        f"# linear log-probs benchmark, {env['device']}, {env['date'][:10]}\n\n"
        f"- machine: {machine} ({env['platform']}), torch threads {env['torch_threads']}, "
        f"load average at start {env.get('load_average')}, at end {env.get('load_average_end')}\n"
        f"- versions: python {env['python']}, {versions}\n"
        f"- command: `{payload.get('command')}`\n"
        f"- time: fastest and median of {args['repeats']} interleaved rounds of forward+backward after a warm-up "
        f"(a method slower than {args['max_seconds']:g} s is timed once); memory: peak transient bytes beyond the "
        "returned log-probs and gradients (see the script's docstring)\n\n"
        f"{table(results)}\n\n{summary}## Raw timings\n\n{raw_lines}\n"
    )


# ----------------------------------------------------------------------------------------------- main
def run_worker(spec: dict) -> tuple[int, str | None]:
    """One shape in a fresh process; its progress lines pass through, the profiler's own chatter does not."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if not line.startswith(("USDT:", "STAGE:")):
            print(line, end="", file=sys.stderr, flush=True)
    stdout = proc.stdout.read()
    proc.wait()
    return proc.returncode, next((x for x in stdout.splitlines() if x.startswith("RESULTS ")), None)


def parse_shape(text: str, dtype: str, seq_len: int) -> Shape:
    task = "logprobs"
    if ":" in text:
        task, text = text.split(":", 1)
    n, h, v = (int(x) for x in text.split(","))
    return Shape(task, n, h, v, dtype, seq_len=min(seq_len, n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a few shapes only (CPU: a few minutes)")
    parser.add_argument(
        "--small",
        action="store_true",
        help="naive, trl_chunked and wrpo_ray at three fp32 shapes (N 512 or 2048, H 256, V 32000 or 128256), "
        "about 1.5 minutes on 2 CPU cores; writes logprobs-<device>-small-<date> with --write",
    )
    parser.add_argument("--shapes", nargs="*", help="[task:]N,H,V (task logprobs or dpo); overrides the grid")
    parser.add_argument("--dtypes", default="fp32", help="with --shapes: comma-separated, fp32,bf16")
    parser.add_argument("--seq-len", type=int, default=512, help="with --shapes: tokens per sequence")
    parser.add_argument("--methods", help="comma-separated subset of: " + ", ".join(LOGPROB_METHODS + DPO_METHODS))
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3)")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="a method whose timed run takes longer is not repeated"
    )
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/logprobs-<device>-<date>")
    parser.add_argument("--out", type=Path, help="results path prefix (implies --write)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in the workers (default: torch's)")
    parser.add_argument("--render", type=Path, help="rewrite PREFIX.md from a recorded PREFIX.json and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(
            render_markdown(json.loads(args.render.with_suffix(".json").read_text()))
        )
        return 0
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        results = run_shape(
            Shape(**spec["shape"]), spec["methods"], spec["device"], spec["repeats"], spec["max_seconds"]
        )
        print("RESULTS " + json.dumps([asdict(r) for r in results]))
        return 0

    args.repeats = args.repeats or 3
    wanted = args.methods.split(",") if args.methods else None
    if args.shapes:
        shapes = [parse_shape(s, d, args.seq_len) for s in args.shapes for d in args.dtypes.split(",")]
    elif args.small:
        shapes, wanted = small_shapes(), wanted or SMALL_METHODS
    else:
        shapes = cuda_shapes(args.quick) if args.device == "cuda" else cpu_shapes(args.quick)
    env = environment(args.device)
    if args.threads:
        env["torch_threads"] = args.threads
    print(f"# {env['cpu'] if args.device == 'cpu' else env.get('gpu')} | {env['versions']}", flush=True)
    size = "-small" if args.small and not args.shapes else ""
    prefix = args.out or RESULTS_DIR / f"logprobs-{args.device}{size}-{env['date'][:10]}"
    results: list[Result] = []
    for shape in shapes:
        methods = LOGPROB_METHODS if shape.task == "logprobs" else DPO_METHODS
        methods = [m for m in methods if wanted is None or m in wanted or m.startswith("naive")]
        spec = {
            "shape": asdict(shape),
            "methods": methods,
            "device": args.device,
            "repeats": args.repeats,
            "max_seconds": args.max_seconds,
            "threads": args.threads,
        }
        returncode, line = run_worker(spec)
        if returncode != 0 or line is None:
            results.append(Result(shape, "all", status=f"worker failed (exit {returncode})"))
        else:
            for raw in json.loads(line[len("RESULTS ") :]):
                raw["shape"] = Shape(**raw["shape"])
                results.append(Result(**raw))
        if args.write or args.out:
            write_results(results, env, prefix, args)
    print(table(results))
    summary = peer_summary(results)
    if summary:
        print("\n" + summary, end="")
    if args.write or args.out:
        print(f"wrote {prefix}.md and {prefix}.json")
    return 0 if all(r.status == "ok" or r.status.startswith("skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

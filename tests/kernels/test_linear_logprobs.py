"""linear_logprobs against a float64 naive reference (logits -> log_softmax -> gather).

The Triton kernels are checked on CPU through Triton's interpreter in a subprocess (TRITON_INTERPRET must be
set before triton is imported), and on CUDA directly when a GPU is present.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from wrpo_ray.kernels import linear_logprobs, sequence_logprob_sums
from wrpo_ray.kernels.reference import naive_linear_logprobs

ll_module = importlib.import_module("wrpo_ray.kernels.linear_logprobs")

IGNORE = -100
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float64: 1e-10}


@dataclass(frozen=True)
class Case:
    softcap: float | None = None
    temperature: float = 1.0
    bias: bool = False


CASES = {
    "plain": Case(),
    "softcap": Case(softcap=4.0),
    "temperature": Case(temperature=0.7),
    "bias": Case(bias=True),
    "all": Case(softcap=3.0, temperature=1.3, bias=True),
}


def reference(hidden, weight, labels, bias=None, softcap=None, temperature=1.0):
    return naive_linear_logprobs(hidden, weight, labels, bias=bias, softcap=softcap, temperature=temperature)


def make_inputs(shape, hdim, vocab, dtype, case, seed=0, device="cpu"):
    """Random inputs of odd sizes; one row entirely ignored and ignored positions mixed into the others."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, hdim, generator=gen)
    weight = torch.randn(vocab, hdim, generator=gen) / hdim**0.25
    bias = torch.randn(vocab, generator=gen) if case.bias else None
    labels = torch.randint(0, vocab, shape, generator=gen)
    labels[0] = IGNORE
    labels.view(-1)[torch.rand(labels.numel(), generator=gen) < 0.3] = IGNORE
    upstream = torch.randn(shape, generator=gen)
    hidden, weight = hidden.to(device, dtype), weight.to(device, dtype)
    bias = bias.to(device, dtype) if bias is not None else None
    return hidden, weight, bias, labels.to(device), upstream.to(device)


def run(hidden, weight, bias, labels, upstream, case, **kwargs):
    leaves = [t.detach().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    out = linear_logprobs(
        leaves[0],
        leaves[1],
        labels,
        bias=leaves[2] if bias is not None else None,
        softcap=case.softcap,
        temperature=case.temperature,
        ignore_index=IGNORE,
        **kwargs,
    )
    grads = torch.autograd.grad(out, leaves, upstream.to(out.dtype), allow_unused=True)
    return out, grads


def run_reference(hidden, weight, bias, labels, upstream, case):
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    out = reference(
        leaves[0], leaves[1], labels, leaves[2] if bias is not None else None, case.softcap, case.temperature
    )
    return out, torch.autograd.grad(out, leaves, upstream.double())


def assert_close(actual, expected, rel):
    """Elementwise within ``rel`` relative, with an absolute floor at ``rel`` times the largest entry."""
    expected = expected.double()
    torch.testing.assert_close(actual.double(), expected, rtol=rel, atol=rel * expected.abs().max().item())


def check_against_reference(inputs, case, dtype, **kwargs):
    out, grads = run(*inputs, case, **kwargs)
    ref_out, ref_grads = run_reference(*inputs, case)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert (out[inputs[3] == IGNORE] == 0).all()
    assert_close(out, ref_out, TOLERANCE[dtype])
    for grad, ref_grad, leaf in zip(grads, ref_grads, inputs[:3], strict=False):
        assert grad.dtype == leaf.dtype
        assert_close(grad, ref_grad, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("chunks", [(None, None), (7, 13)], ids=["default-chunks", "small-chunks"])
def test_torch_matches_reference(dtype, case, chunks):
    inputs = make_inputs((3, 23), 37, 301, dtype, case)
    check_against_reference(inputs, case, dtype, backend="torch", token_chunk=chunks[0], vocab_chunk=chunks[1])


def test_multi_chunk_larger_vocab():
    inputs = make_inputs((2, 45), 64, 5003, torch.float32, Case(), seed=3)
    check_against_reference(inputs, Case(), torch.float32, backend="torch", token_chunk=32, vocab_chunk=1024)


@pytest.mark.parametrize("case", [Case(), Case(softcap=2.5, temperature=0.8, bias=True)], ids=["plain", "all"])
def test_gradcheck_float64(case):
    hidden, weight, bias, labels, _ = make_inputs((2, 4), 5, 7, torch.float64, case, seed=1)
    args = [hidden.requires_grad_(), weight.requires_grad_()] + ([bias.requires_grad_()] if case.bias else [])

    def fn(*tensors):
        return linear_logprobs(
            tensors[0],
            tensors[1],
            labels,
            bias=tensors[2] if case.bias else None,
            softcap=case.softcap,
            temperature=case.temperature,
            token_chunk=3,
            vocab_chunk=4,
        )

    assert torch.autograd.gradcheck(fn, args)


def test_per_token_upstream_gradients_are_not_collapsed():
    """Gradients from per-sequence weights (as in WRPO) equal the sum of per-token contributions."""
    case = Case()
    hidden, weight, _, labels, _ = make_inputs((4, 9), 16, 97, torch.float64, case, seed=2)
    seq_ids = torch.arange(4).unsqueeze(1).expand(4, 9)
    seq_weights = torch.tensor([1.5, -0.25, 0.0, 3.0], dtype=torch.float64)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    result = linear_logprobs(h, w, labels, seq_ids=seq_ids, num_seqs=4)
    (result.sequence * seq_weights).sum().backward()
    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = reference(h_ref, w_ref, labels).sum(-1)
    (ref * seq_weights).sum().backward()
    torch.testing.assert_close(result.sequence, ref)
    torch.testing.assert_close(h.grad, h_ref.grad)
    torch.testing.assert_close(w.grad, w_ref.grad)
    assert h.grad[2].abs().max() == 0


def test_all_ignored():
    hidden, weight, _, _, _ = make_inputs((2, 5), 8, 11, torch.float32, Case())
    labels = torch.full((2, 5), IGNORE)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    out = linear_logprobs(h, w, labels)
    assert out.shape == (2, 5) and (out == 0).all()
    out.sum().backward()
    assert (h.grad == 0).all() and (w.grad == 0).all()


def test_ignored_positions_never_reach_the_matmul(monkeypatch):
    seen = []
    original = ll_module.torch_forward

    def spy(hidden, *args, **kwargs):
        seen.append(hidden.shape[0])
        return original(hidden, *args, **kwargs)

    monkeypatch.setattr(ll_module, "torch_forward", spy)
    hidden, weight, _, labels, _ = make_inputs((3, 10), 8, 19, torch.float32, Case())
    linear_logprobs(hidden, weight, labels)
    assert seen == [int((labels != IGNORE).sum())]


def test_sequence_sums():
    token = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -3.0]])
    seq_ids = torch.tensor([[0, 0, 1], [1, 2, -1]])
    torch.testing.assert_close(sequence_logprob_sums(token, seq_ids, 4), torch.tensor([-0.5, 3.0, 0.0, 0.0]))
    hidden, weight, _, labels, _ = make_inputs((2, 3), 8, 19, torch.float32, Case())
    result = linear_logprobs(hidden, weight, labels, seq_ids=seq_ids)
    torch.testing.assert_close(result.sequence, sequence_logprob_sums(result.token, seq_ids))


def test_backend_selection_and_errors():
    hidden, weight, _, labels, _ = make_inputs((1, 4), 8, 19, torch.float32, Case())
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="CUDA"):
            linear_logprobs(hidden, weight, labels, backend="triton")
    with pytest.raises(ValueError, match="labels"):
        linear_logprobs(hidden, weight, torch.full((1, 4), 19))
    with pytest.raises(ValueError, match="backend"):
        linear_logprobs(hidden, weight, labels, backend="cuda")


def triton_interpreter_checks() -> None:
    """Run in a subprocess with TRITON_INTERPRET=1: the Triton kernels on CPU tensors of small shapes."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    for dtype in (torch.float32, torch.bfloat16):
        for case in (CASES["plain"], CASES["all"]):
            inputs = make_inputs((2, 19), 40, 101, dtype, case, seed=4)
            check_against_reference(inputs, case, dtype, backend="triton")
    print("triton interpreter checks passed")


def test_triton_interpreter_on_cpu():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({__file__!r}, run_name='__triton_check__')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triton interpreter checks passed" in proc.stdout


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cuda_triton_matches_reference(dtype, case):
    inputs = make_inputs((3, 301), 257, 5003, dtype, case, seed=5, device="cuda")
    check_against_reference(inputs, case, dtype, backend="auto")


@cuda
def test_cuda_triton_matches_torch_path_at_scale():
    case = Case(softcap=30.0)
    inputs = make_inputs((2, 2048), 1024, 32000, torch.bfloat16, case, seed=6, device="cuda")
    out_t, grads_t = run(*inputs, case, backend="triton")
    out_p, grads_p = run(*inputs, case, backend="torch")
    assert_close(out_t, out_p, 1e-3)
    for a, b in zip(grads_t, grads_p, strict=True):
        assert_close(a, b, 1e-2)


def test_benchmark_script_runs(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_logprobs.py")
    args = "--shapes 64,16,257 dpo:64,16,257 --seq-len 16 --methods wrpo_ray,wrpo_ray_dpo --repeats 1 --device cpu"
    out = tmp_path / "result"
    proc = subprocess.run(
        [sys.executable, script, *args.split(), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = out.with_suffix(".md").read_text()
    assert "| wrpo_ray |" in report and "| wrpo_ray_dpo |" in report and "| naive_dpo |" in report


if __name__ == "__triton_check__":
    triton_interpreter_checks()

"""Per-token log-probabilities of labels from hidden states and an lm_head weight, without full logits.

For hidden states ``h`` [N, H], weight ``W`` [V, H] (optional bias ``b`` [V]) the logits are
``z = softcap(h W^T + b) / temperature`` where ``softcap(x) = c * tanh(x / c)`` (Gemma-2). The operation
returns ``z[n, y_n] - logsumexp(z[n, :])`` in fp32 and never holds more than one [tokens, vocab] chunk of
``z`` at a time:

* forward: logits chunk by chunk, an online log-sum-exp in fp32, and the label logit picked from its
  chunk; only the per-token log-sum-exp is kept for backward;
* backward: the logits are recomputed chunk by chunk and turned in place into ``p - onehot``; the
  per-token upstream gradient ``g`` is folded into the hidden states (``grad_W += (p - onehot)^T (g h)``)
  and applied to the ``grad_h`` accumulator once at the end, so no extra pass over a chunk is spent on it.

Positions whose label is ``ignore_index`` are removed before any matmul and get log-prob 0.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch.autograd.function import once_differentiable

Backend = Literal["auto", "torch", "triton"]

_F32 = torch.float32
# Elements of one [tokens, vocab] fp32 chunk on the PyTorch path (32 MiB): large enough that the GEMMs run
# at full speed and the number of parallel regions (each an OpenMP barrier, costly when other processes
# share the cores) low, small enough that the passes over it stay in the last-level cache.
_TORCH_CHUNK_ELEMS = 1 << 23
_TORCH_MAX_TOKEN_CHUNK = 4096
_LOW_PRECISION = (torch.bfloat16, torch.float16)


IGNORE_INDEX = -100
"""The label of a position that is not scored (prompt, padding), as in PyTorch and transformers."""


class TokenAndSequenceLogProbs(NamedTuple):
    token: torch.Tensor
    sequence: torch.Tensor


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    seq_ids: torch.Tensor | None = None,
    num_seqs: int | None = None,
    backend: Backend = "auto",
    token_chunk: int | None = None,
    vocab_chunk: int | None = None,
) -> torch.Tensor | TokenAndSequenceLogProbs:
    """Log-probabilities of ``labels`` under ``softcap(hidden @ weight.T + bias) / temperature``.

    Args:
        hidden: [..., H] final hidden states (any float dtype).
        weight: [V, H] lm_head weight.
        labels: [...] target ids; positions equal to ``ignore_index`` are skipped and get 0.
        bias: optional [V] lm_head bias.
        softcap: final-logit soft-capping value (Gemma-2), applied before the temperature.
        temperature: logits are divided by it.
        seq_ids: optional [...] sequence index of each position (negative: belongs to none).
        num_seqs: number of sequences (default ``seq_ids.max() + 1``).
        backend: "auto" picks Triton for CUDA tensors and PyTorch otherwise.
        token_chunk, vocab_chunk: chunk sizes of the PyTorch path (defaults sized from a 32 MiB chunk).

    Returns:
        fp32 (fp64 for fp64 inputs) per-token log-probs shaped like ``labels``; with ``seq_ids``, a
        ``TokenAndSequenceLogProbs`` that also holds the [num_seqs] per-sequence sums. Differentiable
        w.r.t. ``hidden``, ``weight`` and ``bias``.
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not match")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {hidden.shape[-1]}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias {tuple(bias.shape)} does not match vocabulary size {weight.shape[0]}")
    if softcap is not None and softcap <= 0:
        raise ValueError("softcap must be positive")
    if temperature <= 0:
        raise ValueError("temperature must be positive")

    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    keep = flat_labels != ignore_index
    n_total = flat_labels.numel()
    keep_idx = keep.nonzero().squeeze(1)
    all_kept = keep_idx.numel() == n_total
    kept_hidden = flat_hidden if all_kept else flat_hidden.index_select(0, keep_idx)
    kept_labels = flat_labels if all_kept else flat_labels.index_select(0, keep_idx)
    if (
        not kept_labels.is_cuda
        and kept_labels.numel()
        and (int(kept_labels.min()) < 0 or int(kept_labels.max()) >= weight.shape[0])
    ):
        raise ValueError(f"labels must be in [0, {weight.shape[0]}) or equal to ignore_index")

    impl = _select_backend(backend, hidden)
    options = _Options(softcap, float(temperature), impl, token_chunk, vocab_chunk)
    kept_logps = _LinearLogProbs.apply(kept_hidden, weight, bias, kept_labels.long(), options)
    if all_kept:
        token = kept_logps
    else:
        token = kept_logps.new_zeros(n_total).index_copy(0, keep_idx, kept_logps)
    token = token.view(labels.shape)
    if seq_ids is None:
        return token
    return TokenAndSequenceLogProbs(token, sequence_logprob_sums(token, seq_ids, num_seqs))


def sequence_logprob_sums(
    token_logps: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int | None = None
) -> torch.Tensor:
    """Differentiable per-sequence sums of per-token log-probs; positions with a negative id are skipped."""
    if token_logps.shape != seq_ids.shape:
        raise ValueError(f"token_logps {tuple(token_logps.shape)} and seq_ids {tuple(seq_ids.shape)} differ")
    values = token_logps.reshape(-1)
    ids = seq_ids.reshape(-1).long()
    if num_seqs is None:
        num_seqs = int(ids.max()) + 1 if ids.numel() else 0
    valid = ids >= 0
    if not bool(valid.all()):
        values, ids = values[valid], ids[valid]
    return values.new_zeros(num_seqs).index_add(0, ids, values)


class _Options(NamedTuple):
    softcap: float | None
    temperature: float
    impl: str
    token_chunk: int | None
    vocab_chunk: int | None


def _select_backend(backend: Backend, hidden: torch.Tensor) -> str:
    if backend == "auto":
        triton_dtype = hidden.dtype in (torch.float32, torch.bfloat16, torch.float16)
        return "triton" if hidden.is_cuda and triton_dtype and _triton_available() else "torch"
    if backend not in ("torch", "triton"):
        raise ValueError(f"unknown backend {backend!r}")
    return backend


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class _LinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, options: _Options):
        if options.impl == "triton":
            from wrpo_ray.kernels import linear_logprobs_triton as triton_impl

            logps, lse = triton_impl.forward(hidden, weight, bias, labels, options.softcap, options.temperature)
        else:
            logps, lse = torch_forward(
                hidden,
                weight,
                bias,
                labels,
                options.softcap,
                options.temperature,
                options.token_chunk,
                options.vocab_chunk,
            )
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.options = options
        return logps

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        options: _Options = ctx.options
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if options.impl == "triton":
            from wrpo_ray.kernels import linear_logprobs_triton as triton_impl

            grads = triton_impl.backward(
                hidden,
                weight,
                bias,
                labels,
                lse,
                grad_logps.float().contiguous(),
                options.softcap,
                options.temperature,
                need_h,
                need_w,
                need_b and bias is not None,
            )
        else:
            grads = torch_backward(
                hidden,
                weight,
                bias,
                labels,
                lse,
                grad_logps,
                options.softcap,
                options.temperature,
                need_h,
                need_w,
                need_b and bias is not None,
                options.token_chunk,
                options.vocab_chunk,
            )
        return (*grads, None, None)


def _chunk_sizes(n: int, v: int, token_chunk: int | None, vocab_chunk: int | None) -> tuple[int, int]:
    nt = token_chunk or max(1, min(n, _TORCH_MAX_TOKEN_CHUNK))
    vc = vocab_chunk or max(256, _TORCH_CHUNK_ELEMS // max(nt, 1))
    return max(1, min(nt, n)), max(1, min(vc, v))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs (which gradcheck needs)."""
    return torch.float64 if t.dtype == torch.float64 else _F32


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _chunk_view(buffer: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return buffer[: rows * cols].view(rows, cols)


def _logits_chunk(out, h, w, b, softcap, inv_temperature, tanh_out=None):
    """Write the transformed logits of one chunk into ``out``; with ``tanh_out``, also keep tanh(x/c)."""
    torch.mm(h, w.t(), out=out)
    if b is not None:
        out.add_(b)
    if softcap is not None:
        t = out if tanh_out is None else torch.div(out, softcap, out=tanh_out)
        if tanh_out is None:
            t.div_(softcap)
        t.tanh_()
        torch.mul(t, softcap * inv_temperature, out=out)
    elif inv_temperature != 1.0:
        out.mul_(inv_temperature)
    return out


def _targets_in(labels: torch.Tensor, v0: int, v1: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = ((labels >= v0) & (labels < v1)).nonzero().squeeze(1)
    return rows, labels.index_select(0, rows) - v0


def torch_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    softcap: float | None,
    temperature: float,
    token_chunk: int | None = None,
    vocab_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked forward in PyTorch: returns (log-probs [N], log-sum-exp [N]) in fp32 (fp64 for fp64 inputs)."""
    n, v = hidden.shape[0], weight.shape[0]
    device, dtype = hidden.device, _compute_dtype(hidden)
    target = torch.zeros(n, dtype=dtype, device=device)
    running_max = torch.full((n,), -math.inf, dtype=dtype, device=device)
    running_sum = torch.zeros(n, dtype=dtype, device=device)
    if n == 0:
        return target, running_sum
    nt, vc = _chunk_sizes(n, v, token_chunk, vocab_chunk)
    hidden_c = _as(hidden, dtype)
    buffer = torch.empty(nt * vc, dtype=dtype, device=device)
    inv_t = 1.0 / temperature
    for v0 in range(0, v, vc):
        v1 = min(v, v0 + vc)
        w_c = _as(weight[v0:v1], dtype)
        b_c = None if bias is None else _as(bias[v0:v1], dtype)
        for t0 in range(0, n, nt):
            t1 = min(n, t0 + nt)
            z = _logits_chunk(_chunk_view(buffer, t1 - t0, v1 - v0), hidden_c[t0:t1], w_c, b_c, softcap, inv_t)
            rows, cols = _targets_in(labels[t0:t1], v0, v1)
            if rows.numel():
                target.index_copy_(0, rows + t0, z[rows, cols])
            m_old = running_max[t0:t1]
            m_new = torch.maximum(m_old, z.amax(1))
            z.sub_(m_new.unsqueeze(1)).exp_()
            s = running_sum[t0:t1]
            s.mul_(torch.exp(m_old - m_new)).add_(z.sum(1))
            m_old.copy_(m_new)
    lse = running_max.add_(running_sum.log_())
    return target.sub_(lse), lse


def torch_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad: torch.Tensor,
    softcap: float | None,
    temperature: float,
    need_hidden: bool = True,
    need_weight: bool = True,
    need_bias: bool = False,
    token_chunk: int | None = None,
    vocab_chunk: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Chunked backward in PyTorch for per-token upstream gradients ``grad`` [N].

    With ``G = g/T * (onehot - p) * softcap'`` the gradients are ``G @ W``, ``G^T @ h`` and ``G.sum(0)``;
    each chunk holds ``p - onehot`` (times softcap') and the per-token factor ``-g/T`` is applied to ``h``
    (for ``grad_W``) and to the accumulated ``grad_h`` instead of to the chunk. The logits are always
    recomputed in fp32; with 16-bit inputs the two gradient GEMMs take the chunk in the input dtype (as
    tensor-core kernels do) and their results are accumulated across chunks in fp32.
    """
    n, hdim = hidden.shape
    v = weight.shape[0]
    device, dtype = hidden.device, _compute_dtype(hidden)
    if not (need_hidden or need_weight or need_bias):
        return None, None, None
    coef = grad.to(dtype).mul(-1.0 / temperature)
    bias_dtype = None if bias is None else bias.dtype
    acc_h = torch.zeros(n, hdim, dtype=dtype, device=device) if need_hidden else None
    grad_b = torch.zeros(v, dtype=dtype, device=device) if need_bias else None
    if n == 0:
        grad_w = torch.zeros_like(weight) if need_weight else None
        return finish_grads(acc_h, grad_w, grad_b, hidden.dtype, bias_dtype, row_scale=coef)
    grad_w = torch.empty_like(weight) if need_weight else None
    nt, vc = _chunk_sizes(n, v, token_chunk, vocab_chunk)
    single_token_chunk = nt >= n
    gemm_dtype = hidden.dtype if hidden.dtype in _LOW_PRECISION and weight.dtype == hidden.dtype else dtype
    hidden_c = _as(hidden, dtype)
    h_scaled = hidden_c.mul(coef.unsqueeze(1)).to(gemm_dtype) if need_weight else None
    buffer = torch.empty(nt * vc, dtype=dtype, device=device)
    tanh_buffer = torch.empty(nt * vc, dtype=dtype, device=device) if softcap is not None else None
    gemm_buffer = torch.empty(nt * vc, dtype=gemm_dtype, device=device) if gemm_dtype != dtype else None
    scratch_h = torch.empty(nt * hdim, dtype=gemm_dtype, device=device) if need_hidden else None
    # grad_W goes straight into the returned tensor when no dtype change or cross-chunk sum is in the way.
    w_into_grad = need_weight and (weight.dtype == dtype or (single_token_chunk and weight.dtype == gemm_dtype))
    acc_w = None
    if need_weight and not w_into_grad:
        acc_w = torch.empty(vc * hdim, dtype=dtype, device=device)
    scratch_w = torch.empty(vc * hdim, dtype=gemm_dtype, device=device) if acc_w is not None else None
    inv_t = 1.0 / temperature
    for v0 in range(0, v, vc):
        v1 = min(v, v0 + vc)
        w_c = _as(weight[v0:v1], dtype)
        w_gemm = _as(weight[v0:v1], gemm_dtype)
        b_c = None if bias is None else _as(bias[v0:v1], dtype)
        gw_c = None
        if need_weight:
            gw_c = grad_w[v0:v1] if w_into_grad else _chunk_view(acc_w, v1 - v0, hdim)
        for t_index, t0 in enumerate(range(0, n, nt)):
            t1 = min(n, t0 + nt)
            rows_n, cols_n = t1 - t0, v1 - v0
            tanh_c = None if tanh_buffer is None else _chunk_view(tanh_buffer, rows_n, cols_n)
            z = _logits_chunk(_chunk_view(buffer, rows_n, cols_n), hidden_c[t0:t1], w_c, b_c, softcap, inv_t, tanh_c)
            z.sub_(lse[t0:t1].unsqueeze(1)).exp_()
            rows, cols = _targets_in(labels[t0:t1], v0, v1)
            if rows.numel():
                z.index_put_((rows, cols), z.new_tensor(-1.0), accumulate=True)
            if tanh_c is not None:
                z.mul_(tanh_c.square_().neg_().add_(1.0))
            z_gemm = z if gemm_buffer is None else _chunk_view(gemm_buffer, rows_n, cols_n).copy_(z)
            if need_hidden:
                _add_matmul(acc_h[t0:t1], z_gemm, w_gemm, scratch_h, first=False)
            if gw_c is not None:
                _add_matmul(gw_c, z_gemm.t(), h_scaled[t0:t1], scratch_w, first=t_index == 0)
            if need_bias:
                grad_b[v0:v1].add_(coef[t0:t1] @ z)
        if acc_w is not None:
            grad_w[v0:v1].copy_(gw_c)
    return finish_grads(acc_h, grad_w, grad_b, hidden.dtype, bias_dtype, row_scale=coef)


def _add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor | None, first: bool):
    """``acc = a @ b`` (``first``) or ``acc += a @ b``; a 16-bit product goes through ``scratch`` unless
    ``acc`` itself is 16-bit (then it is written once, never accumulated)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b, beta=0.0 if first else 1.0)
        return
    product = torch.mm(a, b, out=_chunk_view(scratch, a.shape[0], b.shape[1]))
    if first:
        acc.copy_(product)
    else:
        acc.add_(product)


def finish_grads(
    grad_h: torch.Tensor | None,
    grad_w: torch.Tensor | None,
    grad_b: torch.Tensor | None,
    hidden_dtype: torch.dtype,
    bias_dtype: torch.dtype | None,
    row_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The gradients the backward of either backend returns, from its accumulators.

    ``grad_h`` [N, H] is multiplied in place by the per-token factor ``row_scale`` [N] when one is given
    (the PyTorch path applies the upstream gradient there; the Triton kernels have already applied it) and
    cast to ``hidden_dtype``; ``grad_b`` is cast to ``bias_dtype``. ``grad_w`` is already in the weight's dtype.
    """
    if grad_h is not None:
        if row_scale is not None:
            grad_h.mul_(row_scale.unsqueeze(1))
        grad_h = _as(grad_h, hidden_dtype)
    if grad_b is not None:
        grad_b = _as(grad_b, bias_dtype)
    return grad_h, grad_w, grad_b

"""Triton kernels of ``linear_logprobs``: GEMM tiles fused with an online softmax, forward and backward.

Forward: a program owns ``BLOCK_N`` tokens and a contiguous range of vocabulary tiles; for each tile it
accumulates the logits over the hidden size with ``tl.dot`` and folds them into a running (max, sum-exp)
and the label logit. The ranges (splits) keep the GPU busy when there are few token blocks; the per-split
partial results are merged with a log-sum-exp in PyTorch.

Backward: a program owns one (token block, vocabulary tile) pair, recomputes its logits, forms
``G = g / T * (onehot - p) * softcap'`` in registers and adds ``G @ W_tile`` and ``G^T @ h_block`` into fp32
gradient buffers with atomics, one hidden-size slice at a time.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the same kernels run on CPU tensors.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from wrpo_ray.kernels.linear_logprobs import finish_grads


class Blocks(NamedTuple):
    n: int
    v: int
    h: int
    num_warps: int = 4
    num_stages: int = 2


def default_blocks(dtype: torch.dtype) -> Blocks:
    if _interpreting():
        return Blocks(16, 32, 16, 1, 1)
    if dtype == torch.float32:
        return Blocks(64, 64, 32, 4, 2)
    return Blocks(64, 128, 64, 8, 3)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _span(start, size, BLOCK: tl.constexpr):
    """Indices ``start .. start + BLOCK`` and which of them are below ``size``."""
    idx = start + tl.arange(0, BLOCK)
    return idx, idx < size


@triton.jit
def _token_block(y_ptr, N, BLOCK_N: tl.constexpr):
    """The program's block of tokens (program id 0): rows, row mask and labels (-1 past ``N``)."""
    rows, row_mask = _span(tl.program_id(0) * BLOCK_N, N, BLOCK_N)
    labels = tl.load(y_ptr + rows, mask=row_mask, other=-1)
    return rows, row_mask, labels


@triton.jit
def _tile_ptrs(base, idx, idx_mask, ks, k_mask, stride, TRANSPOSED: tl.constexpr):
    """Pointers and mask of the tile (rows ``idx``, columns ``ks``) of a row-major matrix with row stride
    ``stride``: [len(idx), len(ks)], or [len(ks), len(idx)] when ``TRANSPOSED``."""
    if TRANSPOSED:
        ptrs = base + idx[None, :].to(tl.int64) * stride + ks[:, None]
        mask = idx_mask[None, :] & k_mask[:, None]
    else:
        ptrs = base + idx[:, None].to(tl.int64) * stride + ks[None, :]
        mask = idx_mask[:, None] & k_mask[None, :]
    return ptrs, mask


@triton.jit
def _load_tile(base, idx, idx_mask, ks, k_mask, stride, TRANSPOSED: tl.constexpr, UPCAST: tl.constexpr):
    """A hidden-state or weight tile (see ``_tile_ptrs``), zero outside the masks, in fp32 when ``UPCAST``."""
    ptrs, mask = _tile_ptrs(base, idx, idx_mask, ks, k_mask, stride, TRANSPOSED)
    tile = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    rows,
    cols,
    row_mask,
    col_mask,
    H,
    stride_h,
    stride_w,
    softcap,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """The logits ``softcap(h W^T + b) / T`` of a (token block, vocabulary tile) in fp32, and with
    ``HAS_SOFTCAP`` the ``tanh((h W^T + b) / softcap)`` its backward needs (otherwise a value to ignore)."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks, k_mask = _span(k0, H, BLOCK_H)
        h_blk = _load_tile(h_ptr, rows, row_mask, ks, k_mask, stride_h, False, UPCAST)
        w_blk = _load_tile(w_ptr, cols, col_mask, ks, k_mask, stride_w, True, UPCAST)
        if IEEE_DOT:
            acc = tl.dot(h_blk, w_blk, acc, input_precision="ieee")
        else:
            acc = tl.dot(h_blk, w_blk, acc)
    z = acc
    if HAS_BIAS:
        z += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    t = z
    if HAS_SOFTCAP:
        t = _tanh(z / softcap)
        z = softcap * t
    z = z * inv_temperature
    return z, t


@triton.jit
def _forward_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    max_ptr,
    sum_ptr,
    target_ptr,
    N,
    V,
    H,
    stride_h,
    stride_w,
    tiles_per_split,
    softcap,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, row_mask, labels = _token_block(y_ptr, N, BLOCK_N)
    pid_s = tl.program_id(1)
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    target = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = pid_s * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(V, BLOCK_V))
    for tile in range(first, last):
        cols, col_mask = _span(tile * BLOCK_V, V, BLOCK_V)
        z, _ = _logits_tile(
            h_ptr,
            w_ptr,
            b_ptr,
            rows,
            cols,
            row_mask,
            col_mask,
            H,
            stride_h,
            stride_w,
            softcap,
            inv_temperature,
            HAS_BIAS,
            HAS_SOFTCAP,
            IEEE_DOT,
            UPCAST,
            BLOCK_N,
            BLOCK_V,
            BLOCK_H,
        )
        z = tl.where(col_mask[None, :], z, float("-inf"))
        target += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
    out = pid_s * N + rows
    tl.store(max_ptr + out, run_max, mask=row_mask)
    tl.store(sum_ptr + out, run_sum, mask=row_mask)
    tl.store(target_ptr + out, target, mask=row_mask)


@triton.jit
def _backward_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    lse_ptr,
    g_ptr,
    gh_ptr,
    gw_ptr,
    gb_ptr,
    N,
    V,
    label_offset,
    H,
    stride_h,
    stride_w,
    softcap,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    UPCAST: tl.constexpr,
    NEED_H: tl.constexpr,
    NEED_W: tl.constexpr,
    NEED_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, row_mask, labels = _token_block(y_ptr, N, BLOCK_N)
    cols, col_mask = _span(tl.program_id(1) * BLOCK_V, V, BLOCK_V)
    z, t = _logits_tile(
        h_ptr,
        w_ptr,
        b_ptr,
        rows,
        cols,
        row_mask,
        col_mask,
        H,
        stride_h,
        stride_w,
        softcap,
        inv_temperature,
        HAS_BIAS,
        HAS_SOFTCAP,
        IEEE_DOT,
        UPCAST,
        BLOCK_N,
        BLOCK_V,
        BLOCK_H,
    )
    labels = labels - label_offset
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    coef = tl.load(g_ptr + rows, mask=row_mask, other=0.0) * inv_temperature
    p = tl.exp(z - lse[:, None])
    onehot = tl.where(cols[None, :] == labels[:, None], 1.0, 0.0)
    grad = coef[:, None] * (onehot - p)
    if HAS_SOFTCAP:
        grad = grad * (1.0 - t * t)
    grad = tl.where(row_mask[:, None] & col_mask[None, :], grad, 0.0)
    if NEED_B:
        tl.atomic_add(gb_ptr + cols, tl.sum(grad, axis=0), mask=col_mask)
    if UPCAST:
        grad_in = grad
    else:
        grad_in = grad.to(h_ptr.dtype.element_ty)
    for k0 in range(0, H, BLOCK_H):
        ks, k_mask = _span(k0, H, BLOCK_H)
        if NEED_H:
            w_blk = _load_tile(w_ptr, cols, col_mask, ks, k_mask, stride_w, False, UPCAST)
            if IEEE_DOT:
                d_h = tl.dot(grad_in, w_blk, input_precision="ieee")
            else:
                d_h = tl.dot(grad_in, w_blk)
            gh_ptrs, gh_mask = _tile_ptrs(gh_ptr, rows, row_mask, ks, k_mask, H, False)
            tl.atomic_add(gh_ptrs, d_h, mask=gh_mask)
        if NEED_W:
            h_blk = _load_tile(h_ptr, rows, row_mask, ks, k_mask, stride_h, False, UPCAST)
            if IEEE_DOT:
                d_w = tl.dot(tl.trans(grad_in), h_blk, input_precision="ieee")
            else:
                d_w = tl.dot(tl.trans(grad_in), h_blk)
            gw_ptrs, gw_mask = _tile_ptrs(gw_ptr, cols, col_mask, ks, k_mask, H, False)
            tl.atomic_add(gw_ptrs, d_w, mask=gw_mask)


def _dot_flags(dtype: torch.dtype) -> dict[str, bool]:
    """fp32 tiles use exact (non-TF32) dots; the interpreter's ``tl.dot`` is wrong for 16-bit tiles, so
    there they are upcast first."""
    upcast = dtype != torch.float32 and _interpreting()
    return {"IEEE_DOT": dtype == torch.float32 or upcast, "UPCAST": upcast}


def _check_device(hidden: torch.Tensor) -> None:
    if not hidden.is_cuda and not _interpreting():
        raise ValueError("the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before importing triton)")


def _prepare(hidden, weight, bias):
    if weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    return hidden, weight, bias


def _num_splits(n_blocks: int, n_tiles: int, device: torch.device) -> tuple[int, int]:
    if device.type == "cuda":
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        programs = 2
    splits = max(1, min(n_tiles, triton.cdiv(programs, n_blocks)))
    tiles_per_split = triton.cdiv(n_tiles, splits)
    return triton.cdiv(n_tiles, tiles_per_split), tiles_per_split


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    softcap: float | None,
    temperature: float,
    blocks: Blocks | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (log-probs [N], log-sum-exp [N]), both fp32."""
    _check_device(hidden)
    hidden, weight, bias = _prepare(hidden, weight, bias)
    n, hdim = hidden.shape
    v = weight.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=hidden.device)
        return empty, empty.clone()
    blocks = blocks or default_blocks(hidden.dtype)
    n_blocks, n_tiles = triton.cdiv(n, blocks.n), triton.cdiv(v, blocks.v)
    splits, tiles_per_split = _num_splits(n_blocks, n_tiles, hidden.device)
    part_max = torch.empty(splits, n, dtype=torch.float32, device=hidden.device)
    part_sum = torch.empty_like(part_max)
    part_target = torch.empty_like(part_max)
    _forward_kernel[(n_blocks, splits)](
        hidden,
        weight,
        bias if bias is not None else hidden,
        labels,
        part_max,
        part_sum,
        part_target,
        n,
        v,
        hdim,
        hidden.stride(0),
        weight.stride(0),
        tiles_per_split,
        float(softcap or 1.0),
        1.0 / temperature,
        HAS_BIAS=bias is not None,
        HAS_SOFTCAP=softcap is not None,
        **_dot_flags(hidden.dtype),
        BLOCK_N=blocks.n,
        BLOCK_V=blocks.v,
        BLOCK_H=blocks.h,
        num_warps=blocks.num_warps,
        num_stages=blocks.num_stages,
    )
    top = part_max.amax(0)
    lse = top + (part_sum * torch.exp(part_max - top)).sum(0).log()
    return part_target.sum(0) - lse, lse


def backward(
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
    blocks: Blocks | None = None,
    slab_bytes: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. (hidden, weight, bias) for per-token upstream gradients ``grad`` [N] (fp32).

    The weight gradient is accumulated in fp32. For a 16-bit weight that accumulator is a slab of
    ``slab_bytes`` (default 256 MiB) covering part of the vocabulary, one kernel launch per slab, each cast
    into the returned gradient when done; an fp32 weight gets its gradient accumulated in place.
    """
    _check_device(hidden)
    weight_dtype = weight.dtype
    bias_dtype = bias.dtype if bias is not None else None
    hidden_in, weight, bias = _prepare(hidden, weight, bias)
    n, hdim = hidden_in.shape
    v = weight.shape[0]
    device = hidden_in.device
    f32 = torch.float32
    grad_h = torch.zeros(n, hdim, dtype=f32, device=device) if need_hidden else None
    grad_b = torch.zeros(v, dtype=f32, device=device) if need_bias else None
    grad_w = None
    if need_weight:
        grad_w = torch.zeros(v, hdim, dtype=weight_dtype, device=device)
    if n > 0 and (need_hidden or need_weight or need_bias):
        blocks = blocks or default_blocks(hidden_in.dtype)
        slab, slab_w = v, None
        if grad_w is not None and grad_w.dtype != f32:
            budget = slab_bytes or ((4 * blocks.v * hdim * 2) if _interpreting() else 256 << 20)
            slab = max(blocks.v, budget // (4 * hdim) // blocks.v * blocks.v)
            slab_w = torch.empty(min(slab, v), hdim, dtype=f32, device=device)
        dummy = grad.new_empty(1)
        lse = lse.contiguous()
        for v0 in range(0, v, slab):
            v1 = min(v, v0 + slab)
            if grad_w is None:
                target_w = dummy
            elif slab_w is None:
                target_w = grad_w
            else:
                target_w = slab_w[: v1 - v0].zero_()
            _backward_kernel[(triton.cdiv(n, blocks.n), triton.cdiv(v1 - v0, blocks.v))](
                hidden_in,
                weight[v0:v1],
                bias[v0:v1] if bias is not None else hidden_in,
                labels,
                lse,
                grad,
                grad_h if grad_h is not None else dummy,
                target_w,
                grad_b[v0:v1] if grad_b is not None else dummy,
                n,
                v1 - v0,
                v0,
                hdim,
                hidden_in.stride(0),
                weight.stride(0),
                float(softcap or 1.0),
                1.0 / temperature,
                HAS_BIAS=bias is not None,
                HAS_SOFTCAP=softcap is not None,
                **_dot_flags(hidden_in.dtype),
                NEED_H=need_hidden,
                NEED_W=need_weight,
                NEED_B=need_bias,
                BLOCK_N=blocks.n,
                BLOCK_V=blocks.v,
                BLOCK_H=blocks.h,
                num_warps=blocks.num_warps,
                num_stages=blocks.num_stages,
            )
            if slab_w is not None:
                grad_w[v0:v1].copy_(target_w)
    return finish_grads(grad_h, grad_w, grad_b, hidden.dtype, bias_dtype)

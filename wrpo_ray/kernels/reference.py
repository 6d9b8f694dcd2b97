"""The naive log-prob reference that the fused kernel is checked and benchmarked against.

Full logits, log-softmax, gather: it materialises ``[tokens, vocab]``, so it is for tests and benchmarks only.
"""

from __future__ import annotations

import torch

from wrpo_ray.kernels.linear_logprobs import IGNORE_INDEX


def naive_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    compute_dtype: torch.dtype | None = torch.float64,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Log-prob of ``labels`` under ``softmax(softcap(hidden @ weight.T + bias) / temperature)``; 0 where ignored.

    ``compute_dtype`` float64 gives the numerical reference; ``None`` computes the logits in the inputs'
    dtype and the softmax in float32, as a plain training step would (the benchmarks' naive baseline).
    """
    if compute_dtype is not None:
        hidden, weight = hidden.to(compute_dtype), weight.to(compute_dtype)
        bias = None if bias is None else bias.to(compute_dtype)
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    if compute_dtype is None:
        logits = logits.float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logp = (logits / temperature).log_softmax(-1)
    keep = labels != ignore_index
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, picked, torch.zeros_like(picked))

"""Fused kernels of the training step; plain PyTorch/Triton, importing nothing from Ray."""

from wrpo_ray.kernels.linear_logprobs import (
    IGNORE_INDEX,
    TokenAndSequenceLogProbs,
    linear_logprobs,
    sequence_logprob_sums,
)

__all__ = ["IGNORE_INDEX", "TokenAndSequenceLogProbs", "linear_logprobs", "sequence_logprob_sums"]

"""TRL's ``DPOTrainer`` as a peer of this project's DPO step, for the parity tests and the TRL benchmark.

One configuration of the trainer (CPU, float32, no dropout, sequential batches, nothing logged or saved), the
conversational rows it takes, a policy that differs from its reference, and this project's encoding of the same
rows. ``encode_rows`` truncates as TRL 1.16 does when ``max_prompt_length == max_length`` (completions cut from
the right, an example whose prompt alone fills ``max_length`` dropped), so a batch of the rows it keeps holds the
tokens TRL's batch of the same rows holds. TRL is the `bench` extra; it is imported on first use.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from wrpo_ray.train.batching import tokenize_example


def conversational(prompt: str, chosen: str, rejected: str) -> dict[str, list[dict[str, str]]]:
    """A preference row in TRL's conversational format: one user turn, one assistant turn per response."""
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def perturbed(model: nn.Module, noise: float, seed: int) -> nn.Module:
    """A copy of ``model`` with seeded Gaussian noise of standard deviation ``noise`` on every weight: a policy
    whose DPO loss against ``model`` as the reference is not the trivial ``log 2``."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
    return out


def dpo_trainer(policy: nn.Module, reference: nn.Module | None, rows: list[dict], tokenizer: Any, output_dir: str, *,
                beta: float, batch_size: int, max_length: int | None = None, **config: Any):
    """A ``DPOTrainer`` with the sigmoid loss on ``rows`` (``conversational``), batches of ``batch_size`` in order.

    A tokenizer without a pad token gets EOS as its pad, as TRL's users do. ``config`` overrides or adds
    ``DPOConfig`` fields (optimizer, steps, ``precompute_ref_log_probs``).
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = DPOConfig(**{
        "output_dir": output_dir,
        "beta": beta,
        "loss_type": ["sigmoid"],
        "per_device_train_batch_size": batch_size,
        "max_length": max_length,
        "train_sampling_strategy": "sequential",
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "seed": 0,
        **config,
    })
    return DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer)


def encode_rows(tokenizer: Any, rows: list[dict], max_length: int) -> tuple[list[dict], list[int]]:
    """This project's encoding of conversational ``rows`` (``tokenize_example``, responses in the order chosen,
    rejected) with TRL's truncation, and the indices of the rows kept."""
    encoded, kept = [], []
    for i, row in enumerate(rows):
        enc, reason, _ = tokenize_example(
            tokenizer, row["prompt"], [row["chosen"][0]["content"], row["rejected"][0]["content"]],
            max_length=max_length, max_prompt_length=max_length,
        )
        if reason is None:
            encoded.append(enc)
            kept.append(i)
    return encoded, kept

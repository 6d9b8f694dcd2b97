"""Prefix-shared, padding-free packing: an example's R sequences as one run of tokens that holds their shared
prefix once.

An encoded example (`batching.tokenize_example`) has R sequences `prompt + completion_r`. Packed, it is
`prefix, rest_1, ..., rest_R`, where the prefix is what all R sequences share (the prompt, or more when the
responses start alike) and `rest_r` is the remainder of sequence r. Every example of a micro-batch follows
the previous one in the same row, so there is no padding at all. Three things make the packed forward equal
to R separate ones:

* position ids restart after the prefix for each response (`rest_r` continues at the prefix's length);
* the attention mask lets a token see earlier tokens of its own example only, and of those only the prefix
  and its own response (`allowed`), with a sliding window measured in those positions for the layers that
  have one;
* the first token of each response is predicted from the prefix's last hidden state, so log-probs are taken
  at `predictors` (the packed index of the position before each scored token), not at a shifted row.

Sequences are numbered example-major, `b * R + r`, as in `batching.collate`, so the losses see the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wrpo_ray.kernels import IGNORE_INDEX


@dataclass
class PackedBatch:
    input_ids: Tensor
    """[1, T] every token of every example, once."""
    position_ids: Tensor
    """[1, T] each token's position in its own sequence."""
    document: Tensor
    """[T] the example each token belongs to."""
    segment: Tensor
    """[T] 0 for the shared prefix, r + 1 for the rest of sequence r."""
    predictors: Tensor
    """[N] for each scored token, the packed index whose hidden state predicts it."""
    targets: Tensor
    """[N] the scored tokens' ids."""
    seq_ids: Tensor
    """[N] the sequence (example-major, `b * R + r`) each scored token belongs to."""
    num_seqs: int
    num_response_tokens: Tensor
    """[B, R] as in `batching.collate`."""
    ref_logps: Tensor | None = None

    def to(self, device: torch.device | str) -> PackedBatch:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return PackedBatch(**moved)

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """The length of the longest prefix every sequence starts with."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        token = sequences[0][i]
        if any(s[i] != token for s in sequences[1:]):
            return i
    return shortest


def pack(examples: list[dict[str, Any]]) -> PackedBatch:
    """Packs encoded examples (`input_ids` and `labels`: R lists each) into one prefix-shared row."""
    if not examples:
        raise ValueError("pack needs at least one example")
    n_responses = {len(e["input_ids"]) for e in examples}
    if len(n_responses) != 1:
        raise ValueError(f"examples have different numbers of responses: {sorted(n_responses)}")
    num_r = n_responses.pop()
    ids: list[int] = []
    positions: list[int] = []
    document: list[int] = []
    segment: list[int] = []
    predictors: list[int] = []
    targets: list[int] = []
    seq_ids: list[int] = []
    for b, example in enumerate(examples):
        sequences, labels = example["input_ids"], example["labels"]
        prefix = shared_prefix_length(sequences)
        base = len(ids)
        ids += sequences[0][:prefix]
        positions += range(prefix)
        document += [b] * prefix
        segment += [0] * prefix
        for r, (seq, lab) in enumerate(zip(sequences, labels, strict=True)):
            if len(seq) != len(lab):
                raise ValueError(f"example {b} response {r}: {len(seq)} tokens but {len(lab)} labels")
            start = len(ids)
            rest = seq[prefix:]
            ids += rest
            positions += range(prefix, len(seq))
            document += [b] * len(rest)
            segment += [r + 1] * len(rest)

            def packed_index(t: int, start: int = start) -> int:
                return base + t if t < prefix else start + t - prefix

            for t in range(1, len(seq)):
                if lab[t] != IGNORE_INDEX:
                    predictors.append(packed_index(t - 1))
                    targets.append(lab[t])
                    seq_ids.append(b * num_r + r)
    long = torch.long
    batch = PackedBatch(
        input_ids=torch.tensor([ids], dtype=long),
        position_ids=torch.tensor([positions], dtype=long),
        document=torch.tensor(document, dtype=long),
        segment=torch.tensor(segment, dtype=long),
        predictors=torch.tensor(predictors, dtype=long),
        targets=torch.tensor(targets, dtype=long),
        seq_ids=torch.tensor(seq_ids, dtype=long),
        num_seqs=len(examples) * num_r,
        num_response_tokens=torch.tensor([e["num_response_tokens"] for e in examples], dtype=torch.float32),
    )
    if all(e.get("ref_logps") is not None for e in examples):
        batch.ref_logps = torch.tensor([list(e["ref_logps"]) for e in examples], dtype=torch.float32)
    return batch


def allowed(batch: PackedBatch, sliding_window: int | None = None) -> Tensor:
    """[T, T] bool: query i may attend key j.

    Same example, not later in the row, the prefix or the query's own response; within `sliding_window`
    positions when given (transformers' rule: `q - kv < window`).
    """
    doc, seg, pos = batch.document, batch.segment, batch.position_ids[0]
    t = doc.shape[0]
    index = torch.arange(t, device=doc.device)
    ok = (doc[:, None] == doc[None, :]) & (index[None, :] <= index[:, None])
    ok &= (seg[None, :] == 0) | (seg[None, :] == seg[:, None])
    if sliding_window is not None:
        ok &= (pos[:, None] - pos[None, :]) < sliding_window
    return ok


def additive_mask(ok: Tensor, dtype: torch.dtype) -> Tensor:
    """[1, 1, T, T] in `dtype`: 0 where allowed, the dtype's lowest value elsewhere (what eager and SDPA
    attention add to the scores; not -inf, so no row is NaN)."""
    mask = torch.zeros(ok.shape, dtype=dtype, device=ok.device)
    mask.masked_fill_(~ok, torch.finfo(dtype).min)
    return mask[None, None]


def attention_masks(config: Any, batch: PackedBatch, dtype: torch.dtype) -> Tensor | dict[str, Tensor]:
    """The `attention_mask` argument of a transformers decoder for a packed batch.

    Models with per-layer attention types (Gemma-2's alternating sliding and full layers, Qwen2) take a dict
    by layer type; the others a 4-D mask, used as given, so a model-wide sliding window (Mistral's) is
    applied here.
    """
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return {kind: additive_mask(allowed(batch, window if kind == "sliding_attention" else None), dtype)
                for kind in set(layer_types)}
    if window is not None and getattr(config, "use_sliding_window", True):
        return additive_mask(allowed(batch, window), dtype)
    return additive_mask(allowed(batch), dtype)

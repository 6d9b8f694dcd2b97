"""Prefix-shared, padding-free packing: an example's R sequences as one run of tokens that holds their shared
prefix once.

An encoded example (`batching.tokenize_example`) has R sequences `prompt + completion_r`. Packed, it is
`prefix, rest_1, ..., rest_R`, where the prefix is what all R sequences share (the prompt, or more when the
responses start alike) and `rest_r` is the remainder of sequence r. Short examples share a row, one after
another (`pack`); a row is padded only at its end. Three things make the packed forward equal to R separate
ones:

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
from wrpo_ray.train.batching import collate, per_example_tensors, responses_per_example


@dataclass
class PackedBatch:
    input_ids: Tensor
    """[rows, C] every token of every example, once; padding only after a row's last example."""
    position_ids: Tensor
    """[rows, C] each token's position in its own sequence."""
    document: Tensor
    """[rows, C] the example each token belongs to (-1: padding)."""
    segment: Tensor
    """[rows, C] 0 for the shared prefix, r + 1 for the rest of sequence r."""
    predictors: Tensor
    """[N] for each scored token, the flat index (`row * C + column`) whose hidden state predicts it."""
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
        """Positions the model computes, padding included."""
        return int(self.input_ids.numel())


PACKINGS = ("shared_prefix", "padded")


def make_batch(rows: list[dict[str, Any]], packing: str, pad_id: int, device: torch.device | str
               ) -> PackedBatch | dict[str, Tensor]:
    """A micro-batch of encoded examples as the policy takes it, on `device`."""
    if packing == "shared_prefix":
        return pack(rows, pad_id=pad_id).to(device)
    if packing == "padded":
        return {k: v.to(device) for k, v in collate(rows, pad_id).items()}
    raise ValueError(f"unknown packing {packing!r}; expected one of {PACKINGS}")


def reference_logps_of(batch: PackedBatch | dict[str, Tensor]) -> Tensor | None:
    return batch.ref_logps if isinstance(batch, PackedBatch) else batch.get("ref_logps")


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """The length of the longest prefix every sequence starts with."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        token = sequences[0][i]
        if any(s[i] != token for s in sequences[1:]):
            return i
    return shortest


def _packed_example(example: dict[str, Any], b: int, num_r: int) -> dict[str, list[int]]:
    """One example's run of tokens, and its scored tokens with their predictors relative to the run's start."""
    sequences, labels = example["input_ids"], example["labels"]
    prefix = shared_prefix_length(sequences)
    run = {"ids": list(sequences[0][:prefix]), "positions": list(range(prefix)), "segment": [0] * prefix,
           "predictors": [], "targets": [], "seq_ids": []}
    for r, (seq, lab) in enumerate(zip(sequences, labels, strict=True)):
        if len(seq) != len(lab):
            raise ValueError(f"example {b} response {r}: {len(seq)} tokens but {len(lab)} labels")
        start = len(run["ids"])
        run["ids"] += seq[prefix:]
        run["positions"] += range(prefix, len(seq))
        run["segment"] += [r + 1] * (len(seq) - prefix)
        for t in range(1, len(seq)):
            if lab[t] != IGNORE_INDEX:
                before = t - 1  # the position that predicts token t, where it lies in the run
                run["predictors"].append(before if before < prefix else start + before - prefix)
                run["targets"].append(lab[t])
                run["seq_ids"].append(b * num_r + r)
    return run


def pack(examples: list[dict[str, Any]], row_tokens: int | None = None, pad_id: int = 0) -> PackedBatch:
    """Packs encoded examples (`input_ids` and `labels`: R lists each) into prefix-shared rows.

    Examples are placed whole, longest first, each into the first row with room for it (`row_tokens`,
    default the longest example's length, so no row grows beyond what one example needs and attention,
    which costs the square of a row's length, stays near the unshared batch's). Rows end with padding up to
    the longest row; padding never sits between examples. Pass a large `row_tokens` for one row.
    """
    num_r = responses_per_example(examples, "pack")
    runs = [_packed_example(e, b, num_r) for b, e in enumerate(examples)]
    capacity = max(row_tokens or 0, max(len(run["ids"]) for run in runs))
    rows: list[list[int]] = []
    room: list[int] = []
    for b in sorted(range(len(runs)), key=lambda i: -len(runs[i]["ids"])):
        need = len(runs[b]["ids"])
        row = next((i for i, left in enumerate(room) if left >= need), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(b)
        room[row] -= need
    width = max(capacity - left for left in room)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    document = torch.full(shape, -1, dtype=torch.long)
    segment = torch.zeros(shape, dtype=torch.long)
    predictors, targets, seq_ids = [], [], []
    for r, members in enumerate(rows):
        offset = 0
        for b in members:
            run = runs[b]
            n = len(run["ids"])
            span = slice(offset, offset + n)
            ids[r, span] = torch.tensor(run["ids"])
            positions[r, span] = torch.tensor(run["positions"])
            document[r, span] = b
            segment[r, span] = torch.tensor(run["segment"])
            predictors += [r * width + offset + i for i in run["predictors"]]
            targets += run["targets"]
            seq_ids += run["seq_ids"]
            offset += n
    return PackedBatch(
        input_ids=ids, position_ids=positions, document=document, segment=segment,
        predictors=torch.tensor(predictors, dtype=torch.long), targets=torch.tensor(targets, dtype=torch.long),
        seq_ids=torch.tensor(seq_ids, dtype=torch.long), num_seqs=len(examples) * num_r,
        **per_example_tensors(examples),
    )


def allowed(batch: PackedBatch, sliding_window: int | None = None) -> Tensor:
    """[rows, C, C] bool: in each row, query i may attend key j.

    Same example, not later in the row, the prefix or the query's own response; within `sliding_window`
    positions when given (transformers' rule: `q - kv < window`). A padding position sees the padding before
    it (never nothing, so no softmax row is empty).
    """
    doc, seg, pos = batch.document, batch.segment, batch.position_ids
    width = doc.shape[1]
    index = torch.arange(width, device=doc.device)
    ok = (doc[:, :, None] == doc[:, None, :]) & (index[None, :] <= index[:, None])
    ok &= (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    if sliding_window is not None:
        ok &= (pos[:, :, None] - pos[:, None, :]) < sliding_window
    return ok


def additive_mask(ok: Tensor, dtype: torch.dtype) -> Tensor:
    """[rows, 1, C, C] in `dtype`: 0 where allowed, the dtype's lowest value elsewhere (what eager and SDPA
    attention add to the scores; not -inf, so no row is NaN)."""
    mask = torch.zeros(ok.shape, dtype=dtype, device=ok.device)
    mask.masked_fill_(~ok, torch.finfo(dtype).min)
    return mask[:, None]


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

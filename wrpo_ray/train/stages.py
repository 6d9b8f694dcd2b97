"""Ray Data stages that prepare training data: tokenization with the target's chat template, and the
reference model's log-probs of every response, computed once so training loads no reference model."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from wrpo_ray.data.schemas import TOKENIZED


class TokenizeBatch:
    """Adds `input_ids`, `labels` (prompt masked), `num_response_tokens`; rows that cannot be used get `error`."""

    def __init__(self, tokenizer_path: str, chat_template: str | None, max_length: int, max_prompt_length: int,
                 trust_remote_code: bool = False, label_prompt: bool = False) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
        self.chat_template = chat_template
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.label_prompt = label_prompt

    def __call__(self, batch: pa.Table) -> pa.Table:
        from wrpo_ray.train.batching import tokenize_example

        out = []
        for row in batch.to_pylist():
            enc, reason, stats = tokenize_example(
                self.tokenizer, row["messages"], row["responses"], max_length=self.max_length,
                max_prompt_length=self.max_prompt_length, chat_template=self.chat_template,
                label_prompt=self.label_prompt,
            )
            out.append({
                "row": row["row"],
                "prompt_id": row["prompt_id"],
                "input_ids": enc["input_ids"] if enc else None,
                "labels": enc["labels"] if enc else None,
                "num_response_tokens": enc["num_response_tokens"] if enc else None,
                "ref_logps": row.get("ref_logps"),
                "prompt_truncated": bool(stats.get("prompt_truncated", False)),
                "responses_truncated": int(stats.get("response_truncated", 0)),
                "error": reason,
            })
        return pa.Table.from_pylist(out, schema=TOKENIZED)


class ReferenceLogps:
    """Forward-only actor: the frozen reference model's summed log-probs of each response (`ref_logps`).

    It runs on what a training worker gets (the driver reserves a GPU per actor when training uses GPUs)
    and in the policy's dtype, so that at the first step the policy's log-probs equal these.
    """

    def __init__(self, model_path: str, dtype: str = "auto", trust_remote_code: bool = False,
                 packing: str = "shared_prefix") -> None:
        from transformers import AutoTokenizer

        from wrpo_ray.runtime import local_device, resolve_dtype
        from wrpo_ray.train.batching import padding_id
        from wrpo_ray.train.policy import SequenceLogprobs, load_causal_lm

        self.device = local_device()
        lm = load_causal_lm(model_path, resolve_dtype(dtype, self.device), trust_remote_code)
        self.model = SequenceLogprobs(lm).eval().to(self.device)
        self.pad_id = padding_id(AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code))
        self.packing = packing

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from wrpo_ray.train.packing import make_batch

        rows = batch.to_pylist()
        for r in rows:
            r["ref_logps"] = None
        with torch.inference_mode():
            logps, _ = self.model(make_batch(rows, self.packing, self.pad_id, self.device))
        per_row = logps.view(len(rows), -1).double().cpu().tolist()
        idx = batch.schema.get_field_index("ref_logps")
        return batch.set_column(idx, "ref_logps", pa.array(per_row, pa.list_(pa.float64())))


def quarantine_row(stage: str, prompt_id: str | None, reason: str, raw: Any = None) -> dict[str, Any]:
    return {"stage": stage, "source": None, "row_index": None, "prompt_id": prompt_id, "model": None,
            "sample_idx": None, "reason": reason, "raw": None if raw is None else json.dumps(raw, default=str)[:2000]}

"""Reward stage: scores every (prompt, response) as a Ray Data callable class.

The reward model formats each conversation with its *own* tokenizer and chat template: it never sees the
source model's tokens. Rows that already carry an error, and scores that are not finite, keep a NaN reward
and an error reason, so the pipeline quarantines them instead of dropping them.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from wrpo_ray.data.schemas import SCORED


def _with_rewards(batch: pa.Table, rewards: list[float], errors: list[str | None]) -> pa.Table:
    table = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
    table = table.append_column("reward", pa.array(rewards, pa.float64()))
    return table.cast(SCORED)


def scoring_pad_id(tokenizer: Any, sequences: list[list[int]]) -> int:
    """A pad id for a batch of reward-model inputs that occurs in none of them.

    Sequence classifiers find each row's last token from the pad id: current transformers take the rightmost
    token that is not it, older and remote-code models the first pad minus one, or the attention mask's sum
    minus one. Reward models built on Llama-3 have no pad token, and padding with EOS would make them score
    the token before a final EOS. Right padding with an id that appears in no sequence satisfies all three:
    the tokenizer's pad id when it is unused, else the smallest unused id.
    """
    used = {token for seq in sequences for token in seq}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in used:
        return int(tokenizer.pad_token_id)
    return next(i for i in range(len(used) + 1) if i not in used)


class RewardModelScorer:
    """A sequence classifier with one label; its raw logit is the reward."""

    def __init__(self, model: dict[str, Any], local_path: str, max_length: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from wrpo_ray.runtime import local_device, resolve_dtype

        torch.set_num_threads(1)
        trc = model.get("trust_remote_code", False)
        self.device = local_device()
        self.tokenizer = AutoTokenizer.from_pretrained(local_path, trust_remote_code=trc)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            local_path, dtype=resolve_dtype(model.get("dtype", "auto"), self.device), trust_remote_code=trc
        ).to(self.device).eval()
        if self.model.config.num_labels != 1 and not trc:
            raise ValueError(f"reward model {local_path} has {self.model.config.num_labels} labels; expected 1")
        self.chat_template = model.get("chat_template")
        self.max_length = max_length

    def _text(self, messages: list[dict[str, str]], response: str) -> str:
        return self.tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}],
            tokenize=False, chat_template=self.chat_template,
        )

    @staticmethod
    def _scores(output):
        """The scalar reward: a remote-code model's `score` (e.g. ArmoRM), else the single logit."""
        score = getattr(output, "score", None)
        if score is not None:
            return score.reshape(score.shape[0], -1)[:, 0]
        return output.logits[:, 0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from wrpo_ray.train.batching import pad_sequences

        rows = batch.to_pylist()
        rewards = [math.nan] * len(rows)
        errors = [r["error"] for r in rows]
        todo = [i for i, r in enumerate(rows) if r["error"] is None]
        if todo:
            texts = [self._text(rows[i]["messages"], rows[i]["response"]) for i in todo]
            ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"][-self.max_length:] for t in texts]
            pad_id = scoring_pad_id(self.tokenizer, ids)
            self.model.config.pad_token_id = pad_id
            self.model.config.get_text_config().pad_token_id = pad_id
            with torch.inference_mode():
                input_ids, attention_mask = pad_sequences(ids, pad_id)
                output = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
                logits = self._scores(output).float().tolist()
            for i, v in zip(todo, logits, strict=True):
                if math.isfinite(v):
                    rewards[i] = v
                else:
                    errors[i] = f"non_finite_reward: {v}"
        return _with_rewards(batch, rewards, errors)


class VerifierScorer:
    """A Python function `fn(prompt_row, response) -> float`; prompt metadata fields are merged into the row."""

    def __init__(self, spec: str) -> None:
        from wrpo_ray.config import resolve_callable

        self.spec = spec
        self.fn = resolve_callable(spec)

    def score(self, row: dict[str, Any]) -> tuple[float, str | None]:
        import json

        prompt_row = {**json.loads(row["metadata"] or "{}"), "prompt_id": row["prompt_id"],
                      "prompt": row["prompt"], "messages": row["messages"]}
        try:
            value = float(self.fn(prompt_row, row["response"]))
        except Exception as e:  # noqa: BLE001 - a verifier failure is a per-row quarantine reason
            return math.nan, f"verifier_failed: {type(e).__name__}: {e}"[:500]
        if not math.isfinite(value):
            return math.nan, f"non_finite_reward: {value}"
        return value, None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rewards, errors = [], []
        for row in batch.to_pylist():
            if row["error"] is not None:
                rewards.append(math.nan)
                errors.append(row["error"])
                continue
            value, err = self.score(row)
            rewards.append(value)
            errors.append(err)
        return _with_rewards(batch, rewards, errors)

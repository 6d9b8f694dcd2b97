"""Tokenization of preference examples with the target's chat template, and collation into tensors.

An example with R responses becomes R sequences ``prompt + completion_r`` that share the same prompt
tokens. The completion is what the chat template adds after the generation prompt when the response is
appended as an assistant turn, so it includes the end-of-turn text the model must learn to emit
(``<|im_end|>\\n`` for ChatML, ``</s>`` for Mistral). Labels are ``-100`` on prompt and padding positions.

Label convention: ``labels[s, t]`` is the token at position ``t`` when it is scored, ``-100`` otherwise.
A causal LM predicts token ``t`` from position ``t - 1``, so the log-prob of a labelled token comes from
``logits[s, t - 1]``. :func:`per_token_targets` does the shift.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from wrpo_ray.kernels import IGNORE_INDEX
from wrpo_ray.train.preference_data import response_names


def tokenize_example(
    tokenizer: Any,
    messages: list[dict[str, str]],
    responses: list[str],
    *,
    max_length: int,
    max_prompt_length: int,
    chat_template: str | None = None,
    label_prompt: bool = False,
) -> tuple[dict[str, list] | None, str | None, dict[str, Any]]:
    """Encode one example; ``(encoded, None, stats)`` or ``(None, reason, stats)``.

    With ``label_prompt`` the prompt tokens are labelled too (a loss on the whole sequence, as in the
    official WRPO Target-SFT recipe); ``num_response_tokens`` still counts the completion only.

    Truncation: a prompt longer than ``max_prompt_length`` keeps its *last* tokens (the question usually
    ends the prompt), then each completion is cut from the right to fit ``max_length`` with the prompt.
    TRL 1.16's DPOTrainer differs: it has no prompt limit and cuts each whole prompt+completion sequence to
    ``max_length`` (``truncation_mode="keep_start"``, its default, keeps the start and so drops the end of the
    completion; it drops examples whose prompt alone fills ``max_length``). Here a long prompt loses its
    start instead, and every completion keeps at least ``max_length - max_prompt_length`` tokens. A completion
    cut here loses its end-of-turn text; ``stats`` counts what was cut, and how many responses needed the
    fallback for a template whose prompt is not a prefix of the full conversation (response tokens plus EOS).
    A template that refuses the conversation (a system turn for Mistral or Gemma-2) gives
    ``chat_template_error``.
    """
    if max_length < 1 or max_prompt_length < 1:
        raise ValueError(f"max_length and max_prompt_length must be positive, got {max_length}, {max_prompt_length}")
    from jinja2 import TemplateError

    try:
        prompt_text, completions = _render(tokenizer, messages, responses, chat_template)
    except TemplateError as e:  # e.g. Mistral's and Gemma-2's templates refuse a system turn
        return None, f"chat_template_error: {e}", {"prompt_truncated": False, "response_truncated": 0}
    prompt_ids = _encode(tokenizer, prompt_text)
    completion_ids = [
        _encode(tokenizer, text) if text is not None else _fallback_completion(tokenizer, response)
        for text, response in zip(completions, responses, strict=True)
    ]
    stats: dict[str, Any] = {
        "prompt_truncated": len(prompt_ids) > max_prompt_length,
        "response_truncated": 0,
        "template_fallback": sum(text is None for text in completions),
    }
    prompt_ids = prompt_ids[-max_prompt_length:]
    room = max_length - len(prompt_ids)
    stats["response_truncated"] = sum(len(ids) > room for ids in completion_ids)
    completion_ids = [ids[: max(room, 0)] for ids in completion_ids]
    empty = [name for name, ids in zip(response_names(len(responses)), completion_ids, strict=True) if not ids]
    if empty:
        return None, f"all_response_tokens_truncated: {', '.join(empty)}", stats
    encoded = {
        "input_ids": [prompt_ids + ids for ids in completion_ids],
        "labels": [(prompt_ids if label_prompt else [IGNORE_INDEX] * len(prompt_ids)) + ids for ids in completion_ids],
        "num_response_tokens": [len(ids) for ids in completion_ids],
    }
    return encoded, None, stats


def _render(
    tokenizer: Any, messages: list[dict[str, str]], responses: list[str], chat_template: str | None
) -> tuple[str, list[str | None]]:
    """The prompt text and each completion text; None where the prompt is not a prefix of the conversation.

    Templates without a generation prompt (Mistral's) render the same text either way; a template that
    ignores ``add_generation_prompt`` is tried without it as well.
    """

    def apply(conversation: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template
        )

    fulls = [apply([*messages, {"role": "assistant", "content": r}], False) for r in responses]
    prompts = [apply(messages, True), apply(messages, False)]
    for prompt in prompts:
        if all(full.startswith(prompt) and len(full) > len(prompt) for full in fulls):
            return prompt, [full[len(prompt) :] for full in fulls]
    prompt = prompts[0]
    return prompt, [
        full[len(prompt) :] if full.startswith(prompt) and len(full) > len(prompt) else None for full in fulls
    ]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _fallback_completion(tokenizer: Any, response: str) -> list[int]:
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return _encode(tokenizer, response) + eos


def padding_id(tokenizer: Any) -> int:
    """The id written into padded positions: the tokenizer's pad token, else EOS, else 0.

    Llama-3 and Mistral tokenizers have no pad token. Padded positions are masked out of attention and
    labelled ``IGNORE_INDEX``, so their value never reaches a log-prob; any valid id will do.
    """
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def pad_sequences(
    sequences: list[list[int]], pad_id: int, width: int | None = None, side: str = "right"
) -> tuple[Tensor, Tensor]:
    """``[N, width]`` token ids padded with ``pad_id`` on ``side``, and the attention mask (1 on real tokens)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    width = width or max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def responses_per_example(examples: list[dict[str, Any]], who: str) -> int:
    """R, the number of responses every encoded example has; an error when there are none or they differ."""
    if not examples:
        raise ValueError(f"{who} needs at least one example")
    n_responses = {len(e["input_ids"]) for e in examples}
    if len(n_responses) != 1:
        raise ValueError(f"examples have different numbers of responses: {sorted(n_responses)}")
    return n_responses.pop()


def per_example_tensors(examples: list[dict[str, Any]]) -> dict[str, Tensor]:
    """``num_response_tokens`` ``[B, R]`` (float) and, when every example has them, ``ref_logps`` ``[B, R]``:
    what a batch carries per example, whatever its layout."""
    out = {"num_response_tokens": torch.tensor([e["num_response_tokens"] for e in examples], dtype=torch.float32)}
    if all(e.get("ref_logps") is not None for e in examples):
        out["ref_logps"] = torch.tensor([list(e["ref_logps"]) for e in examples], dtype=torch.float32)
    return out


def collate(
    examples: list[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Tensor]:
    """Stack encoded examples, example-major: row ``b * R + r`` is response ``r`` of example ``b``.

    ``pad_token_id`` must be an id (see :func:`padding_id` for tokenizers without a pad token).

    Returns right-padded ``input_ids``, ``attention_mask`` and ``labels`` of shape ``[B * R, T]``,
    ``num_response_tokens`` of shape ``[B, R]`` (float) and, when every example has them, ``ref_logps``
    of shape ``[B, R]``.
    """
    responses_per_example(examples, "collate")
    if not isinstance(pad_token_id, int):
        raise TypeError(f"pad_token_id must be an int, got {pad_token_id!r}: use padding_id(tokenizer)")
    sequences = [ids for e in examples for ids in e["input_ids"]]
    labels = [lab for e in examples for lab in e["labels"]]
    width = max(len(ids) for ids in sequences)
    if pad_to_multiple_of:
        width = math.ceil(width / pad_to_multiple_of) * pad_to_multiple_of
    input_ids, attention_mask = pad_sequences(sequences, pad_token_id, width)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": pad_sequences(labels, IGNORE_INDEX, width)[0], **per_example_tensors(examples)}


def per_token_targets(labels: Tensor) -> Tensor:
    """Targets aligned with every position: ``targets[:, t] = labels[:, t + 1]``, ``-100`` at the last one.

    Same shape as ``labels``, so it pairs with logits or hidden states of every position without slicing.
    """
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[..., :-1] = labels[..., 1:]
    return targets

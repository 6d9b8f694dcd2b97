import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from wrpo_ray.toy.build import toy_model_path
from wrpo_ray.toy.registry import REWARD_STYLE
from wrpo_ray.train.batching import (
    IGNORE_INDEX,
    collate,
    padding_id,
    per_token_targets,
    tokenize_example,
)

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 12 plus 7?"}]
RESPONSES = ["The answer is 19.", "12 + 7 = 19", "It is 21, I think."]
END_OF_TURN = {"qwen2": "<|im_end|>\n", "mistral": "</s>", "target": "<|eot_id|>", "gemma2": "<end_of_turn>\n"}
NO_SYSTEM_ROLE = {"mistral", "gemma2"}


def _messages(name):
    return MESSAGES[1:] if name in NO_SYSTEM_ROLE else MESSAGES


@pytest.fixture(scope="module")
def tokenizers():
    return {name: AutoTokenizer.from_pretrained(toy_model_path(name)) for name in END_OF_TURN}


def _decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _encode(tokenizer, messages=MESSAGES, responses=RESPONSES, **kw):
    kw = {"max_length": 512, "max_prompt_length": 256, **kw}
    return tokenize_example(tokenizer, messages, responses, **kw)


@pytest.mark.parametrize("name", list(END_OF_TURN))
def test_labels_mask_exactly_the_prompt(tokenizers, name):
    tok = tokenizers[name]
    messages = _messages(name)
    encoded, reason, stats = _encode(tok, messages=messages)
    assert reason is None
    assert stats == {"prompt_truncated": False, "response_truncated": 0, "template_fallback": 0}
    prompt_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert len(encoded["input_ids"]) == len(encoded["labels"]) == 3
    for ids, labels, n, response in zip(
        encoded["input_ids"], encoded["labels"], encoded["num_response_tokens"], RESPONSES, strict=True
    ):
        n_prompt = len(ids) - n
        assert ids[:n_prompt] == prompt_ids
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]
        assert IGNORE_INDEX not in labels[n_prompt:]
        assert _decode(tok, ids[n_prompt:]) == response + END_OF_TURN[name]
        full = tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
        assert _decode(tok, ids) == full


def test_prompt_truncation_keeps_the_last_tokens(tokenizers):
    tok = tokenizers["target"]
    full, _, _ = _encode(tok)
    n_prompt = len(full["input_ids"][0]) - full["num_response_tokens"][0]
    encoded, reason, stats = _encode(tok, max_prompt_length=5)
    assert reason is None
    assert stats["prompt_truncated"] is True and stats["response_truncated"] == 0
    for short, long, n in zip(encoded["input_ids"], full["input_ids"], full["num_response_tokens"], strict=True):
        assert short == long[n_prompt - 5 :]
        assert len(short) == 5 + n
    assert encoded["num_response_tokens"] == full["num_response_tokens"]


def test_response_truncation_is_counted(tokenizers):
    tok = tokenizers["target"]
    full, _, _ = _encode(tok)
    lengths = full["num_response_tokens"]
    n_prompt = len(full["input_ids"][0]) - lengths[0]
    room = sorted(lengths)[1]  # the two longer responses (or ties above the middle) are cut
    encoded, reason, stats = _encode(tok, max_length=n_prompt + room)
    assert reason is None
    assert stats["prompt_truncated"] is False
    assert stats["response_truncated"] == sum(n > room for n in lengths) >= 1
    assert encoded["num_response_tokens"] == [min(n, room) for n in lengths]
    for short, long in zip(encoded["input_ids"], full["input_ids"], strict=True):
        assert short == long[: n_prompt + room]
        assert len(short) <= n_prompt + room


def test_all_response_tokens_truncated_is_a_reason(tokenizers):
    tok = tokenizers["target"]
    encoded, reason, stats = _encode(tok, max_length=6, max_prompt_length=6)
    assert encoded is None
    assert reason == "all_response_tokens_truncated: y_ws, y_wt, y_l"
    assert stats == {"prompt_truncated": True, "response_truncated": 3, "template_fallback": 0}
    _, reason, _ = _encode(tok, responses=RESPONSES[:2], max_length=6, max_prompt_length=6)
    assert reason == "all_response_tokens_truncated: chosen, rejected"


def test_template_without_prompt_prefix_falls_back_to_response_plus_eos(tokenizers):
    tok = tokenizers["target"]
    # This template closes every conversation with EOS, so the prompt is never a prefix of the full text.
    encoded, reason, stats = _encode(tok, responses=RESPONSES[:2], chat_template=REWARD_STYLE.template)
    assert reason is None
    assert stats["template_fallback"] == 2
    for ids, n, response in zip(encoded["input_ids"], encoded["num_response_tokens"], RESPONSES[:2], strict=True):
        assert ids[-n:] == tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_collate_shapes_order_and_padding(tokenizers):
    tok = tokenizers["target"]
    a, _, _ = _encode(tok)
    b, _, _ = _encode(tok, messages=[{"role": "user", "content": "Hi"}], responses=["Hello!", "Yo", "Go away."])
    a["ref_logps"], b["ref_logps"] = [-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]
    batch = collate([a, b], pad_token_id=padding_id(tok), pad_to_multiple_of=8)
    sequences = a["input_ids"] + b["input_ids"]
    width = max(len(s) for s in sequences)
    assert batch["input_ids"].shape == (6, math.ceil(width / 8) * 8)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    for i, (ids, labels) in enumerate(zip(sequences, a["labels"] + b["labels"], strict=True)):
        n = len(ids)
        assert batch["input_ids"][i, :n].tolist() == ids
        assert batch["labels"][i, :n].tolist() == labels
        assert (batch["input_ids"][i, n:] == padding_id(tok)).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert batch["num_response_tokens"].dtype == torch.float32
    assert batch["num_response_tokens"].tolist() == [a["num_response_tokens"], b["num_response_tokens"]]
    assert batch["ref_logps"].tolist() == [[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]]
    # The response-token count equals the number of labelled positions of each sequence.
    counts = (batch["labels"] != IGNORE_INDEX).sum(-1).view(2, 3).float()
    assert torch.equal(counts, batch["num_response_tokens"])

    del b["ref_logps"]
    assert "ref_logps" not in collate([a, b], pad_token_id=padding_id(tok))
    assert collate([a], pad_token_id=padding_id(tok))["input_ids"].shape[1] == max(len(s) for s in a["input_ids"])


def test_collate_rejects_mixed_response_counts(tokenizers):
    tok = tokenizers["target"]
    a, _, _ = _encode(tok)
    b, _, _ = _encode(tok, responses=RESPONSES[:2])
    with pytest.raises(ValueError, match="different numbers"):
        collate([a, b], pad_token_id=0)
    with pytest.raises(ValueError):
        collate([], pad_token_id=0)


def test_target_shift():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, 8, -100]])
    assert per_token_targets(labels).tolist() == [[-100, 5, 6, -100], [7, 8, -100, -100]]


@pytest.mark.parametrize("name", sorted(NO_SYSTEM_ROLE))
def test_a_template_that_refuses_a_system_turn_is_a_row_error(tokenizers, name):
    encoded, reason, _ = _encode(tokenizers[name])
    assert encoded is None
    assert reason.startswith("chat_template_error:")


def test_pad_fallback_for_tokenizers_without_a_pad_token(tokenizers):
    """Llama-3 and Mistral have no pad token: padding uses EOS (masked), and collate refuses None."""
    for name in ("target", "mistral"):
        tok = tokenizers[name]
        assert tok.pad_token_id is None
        assert padding_id(tok) == tok.eos_token_id
    assert padding_id(tokenizers["qwen2"]) == tokenizers["qwen2"].pad_token_id
    a, _, _ = _encode(tokenizers["target"])
    with pytest.raises(TypeError, match="padding_id"):
        collate([a], pad_token_id=None)


def test_whole_sequence_loss_labels_the_prompt_too(tokenizers):
    """The official Target-SFT recipe trains on the whole sequence; the default on the completion only."""
    tok = tokenizers["target"]
    only, _, _ = _encode(tok, responses=RESPONSES[:1])
    whole, _, _ = _encode(tok, responses=RESPONSES[:1], label_prompt=True)
    assert whole["input_ids"] == only["input_ids"]
    assert whole["labels"][0] == whole["input_ids"][0]
    assert whole["num_response_tokens"] == only["num_response_tokens"]


def test_paper_recipe_uses_the_official_sft_settings():
    import yaml

    from wrpo_ray.config import SftConfig

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "jobs/configs/paper-llama3-8b.yaml").read_text())
    sft = SftConfig.model_validate(raw["sft"])
    assert (sft.learning_rate, sft.epochs, sft.completion_only_loss) == (7e-6, 1, False)
    assert SftConfig().completion_only_loss

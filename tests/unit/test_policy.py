"""Training log-probs through the fused kernel, on a real tiny HF model (no Ray)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from wrpo_ray.runtime import resolve_dtype
from wrpo_ray.toy.build import toy_model_path
from wrpo_ray.train.batching import collate, padding_id, tokenize_example
from wrpo_ray.train.policy import SequenceLogprobs
from wrpo_ray.train.stages import ReferenceLogps

MESSAGES = [{"role": "user", "content": "Reverse the letters: abc"}]
RESPONSES = ["cba", "cab", "xyz zz"]


@pytest.fixture(scope="module", params=["target", "gemma2"])
def setup(request):
    path = str(toy_model_path(request.param))
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    enc, reason, _ = tokenize_example(tok, MESSAGES, RESPONSES, max_length=64, max_prompt_length=32)
    assert reason is None
    return path, lm, collate([enc, enc], padding_id(tok))


def naive_sequence_logps(lm, batch):
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    targets = torch.full_like(batch["labels"], -100)
    targets[:, :-1] = batch["labels"][:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(1)


def test_fused_logps_equal_naive_path(setup):
    _, lm, batch = setup
    fused, n_tokens = SequenceLogprobs(lm)(batch)
    assert torch.allclose(fused.double(), naive_sequence_logps(lm, batch), rtol=1e-5, atol=1e-4)
    assert n_tokens.tolist() == (batch["labels"] != -100).sum(1).tolist()


def test_no_full_logits_in_a_training_step(setup):
    _, lm, batch = setup
    calls = []
    handle = lm.get_output_embeddings().register_forward_hook(lambda *a: calls.append(a))
    try:
        policy = SequenceLogprobs(lm)
        logps, _ = policy(batch)
        logps.sum().backward()
    finally:
        handle.remove()
    assert calls == []
    assert lm.get_output_embeddings().weight.grad is not None
    lm.zero_grad()


def test_precomputed_reference_equals_frozen_reference(setup):
    """The reference stage's column and an in-loop frozen reference give the same numbers."""
    import pyarrow as pa

    path, lm, batch = setup
    tok = AutoTokenizer.from_pretrained(path)
    enc, _, _ = tokenize_example(tok, MESSAGES, RESPONSES, max_length=64, max_prompt_length=32)
    table = pa.Table.from_pylist([{**enc, "ref_logps": None}, {**enc, "ref_logps": None}],
                                 schema=pa.schema([("input_ids", pa.list_(pa.list_(pa.int32()))),
                                                   ("labels", pa.list_(pa.list_(pa.int32()))),
                                                   ("num_response_tokens", pa.list_(pa.int32())),
                                                   ("ref_logps", pa.list_(pa.float64()))]))
    column = torch.tensor(ReferenceLogps(path)(table)["ref_logps"].to_pylist())
    with torch.no_grad():
        frozen, _ = SequenceLogprobs(lm).eval()(batch)
    assert column.shape == (2, 3)
    assert torch.allclose(column.float(), frozen.view(2, 3), rtol=1e-6, atol=1e-5)


def test_dtype_setting_is_honoured():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_dtype("float32", gpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype("auto", cpu) == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", cpu)


def test_reference_stage_uses_the_configured_dtype(setup):
    path, _, _ = setup
    assert ReferenceLogps(path, dtype="bfloat16").model.lm.dtype == torch.bfloat16
    assert ReferenceLogps(path, dtype="float32").model.lm.dtype == torch.float32

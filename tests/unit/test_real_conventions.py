"""The tiny models carry real models' conventions, and every stage copes with them (no Ray, no vLLM)."""

import json

import pyarrow as pa
import pytest
from transformers import AutoConfig, AutoTokenizer

from wrpo_ray.data.schemas import GENERATED
from wrpo_ray.generate.engines import prompt_token_ids
from wrpo_ray.generate.reward import RewardModelScorer, scoring_pad_id
from wrpo_ray.generate.select import selection
from wrpo_ray.toy.build import toy_model_path
from wrpo_ray.toy.registry import TOY_MODELS
from wrpo_ray.train.batching import pad_sequences

USER = [{"role": "user", "content": "Add: 2+3"}]
SYSTEM = [{"role": "system", "content": "Be brief."}, *USER]


def _tok(name):
    return AutoTokenizer.from_pretrained(toy_model_path(name))


def test_llama3_style_no_pad_bos_from_template_and_tokenizer():
    tok = _tok("target")
    assert tok.pad_token is None and tok.eos_token == "<|eot_id|>"
    assert tok("x")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds BOS itself, like Llama-3's
    ids, error = prompt_token_ids(tok, SYSTEM)
    assert error is None
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # never twice
    assert "<|start_header_id|>system" in tok.decode(ids)


@pytest.mark.parametrize("name,message", [("mistral", "alternate"), ("gemma2", "System role not supported")])
def test_templates_without_a_system_role_refuse_it_per_row(name, message):
    tok = _tok(name)
    ids, error = prompt_token_ids(tok, SYSTEM)
    assert ids == [] and error.startswith("chat_template_error:") and message in error
    ids, error = prompt_token_ids(tok, USER)
    assert error is None and ids


def test_family_conventions():
    assert _tok("mistral").pad_token is None and _tok("mistral").eos_token == "</s>"
    assert _tok("qwen2").pad_token is not None
    gemma = AutoConfig.from_pretrained(toy_model_path("gemma2"))
    assert gemma.final_logit_softcapping == 30.0 and gemma.tie_word_embeddings
    assert TOY_MODELS["target-weak"].style.pad is None, "the demo's target has no pad token"


def test_reward_scores_do_not_depend_on_batching_without_a_pad_token():
    """Batched (left-padded) scores equal one-at-a-time scores for a reward model with no pad token."""
    scorer = RewardModelScorer({"dtype": "float32"}, str(toy_model_path("reward")), max_length=256)
    assert scorer.tokenizer.pad_token is None
    rows = [{"prompt_id": "p", "prompt": "Add: 2+3", "messages": USER, "metadata": "{}", "model": "m",
             "sample_idx": i, "response": r, "num_tokens": 1, "prompt_tokens": 1, "finish_reason": "stop",
             "gen_seconds": 0.0, "error": None} for i, r in enumerate(["5", "five, I think, or six", "6"])]
    table = pa.Table.from_pylist(rows, schema=GENERATED)
    together = scorer(table)["reward"].to_pylist()
    alone = [scorer(table.slice(i, 1))["reward"][0].as_py() for i in range(len(rows))]
    assert together == pytest.approx(alone, abs=1e-5)


def test_scoring_pad_id_occurs_in_no_sequence():
    class NoPad:
        pad_token_id = None

    class PadInText:
        pad_token_id = 5

    assert scoring_pad_id(NoPad(), [[5, 0], [7, 1], [3, 2]]) == 4
    assert scoring_pad_id(PadInText(), [[5, 0]]) == 1
    input_ids, attention_mask = pad_sequences([[4, 5, 6], [7]], pad_id=2)
    assert input_ids.tolist() == [[4, 5, 6], [7, 2, 2]]
    assert attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    input_ids, attention_mask = pad_sequences([[4, 5, 6], [7]], pad_id=2, side="left")
    assert input_ids.tolist() == [[4, 5, 6], [2, 2, 7]] and attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


PROMPT = {"prompt_id": "p", "prompt": "Add: 2+3", "messages": USER, "metadata": "{}"}


def test_truncated_samples_are_not_selected_by_default():
    samples = [
        {"model": "a", "sample_idx": 0, "response": "5 and then som", "num_tokens": 16, "finish_reason": "length",
         "reward": 0.9},
        {"model": "b", "sample_idx": 0, "response": "5", "num_tokens": 2, "finish_reason": "stop", "reward": 0.7},
        {"model": "b", "sample_idx": 1, "response": "4", "num_tokens": 2, "finish_reason": "stop", "reward": 0.1},
    ]
    chosen = selection(PROMPT, samples)
    assert chosen["y_ws"] == "5" and chosen["y_worst"] == "4" and chosen["num_candidates"] == 2
    assert json.loads(chosen["rewards_by_model"]) == {"b": [0.7, 0.1]}
    kept = selection(PROMPT, samples, keep_truncated=True)
    assert kept["y_ws"] == "5 and then som"
    only_truncated = [samples[0]]
    assert selection(PROMPT, only_truncated) is None

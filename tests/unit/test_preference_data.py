import random

import numpy as np
import pytest

from wrpo_ray.data.prompts import derive_prompt_id
from wrpo_ray.train.preference_data import in_sft_split, normalize_preference_row

USER = {"role": "user", "content": "What is 2+2?"}


def _project(**overrides):
    row = {
        "prompt_id": "p1",
        "prompt": "What is 2+2?",
        "y_ws": "source says 4",
        "y_wt": "target says 4",
        "y_l": "it is 5",
        "reward_ws": 0.9,
        "reward_wt": 0.7,
        "reward_l": 0.1,
        "source_model": "llama",
        "ref_logps": [-10.0, -8.0, -12.5],
    }
    row.update(overrides)
    return row


def _assistant(text):
    return {"role": "assistant", "content": text}


def _paper(**overrides):
    row = {
        "prompt_id": "p1",
        "prompt": "What is 2+2?",
        "chosen": [_assistant("source says 4"), _assistant("target says 4")],
        "rejected": [_assistant("it is 5")],
    }
    row.update(overrides)
    return row


def _ok(row, kind, **kw):
    example, reason = normalize_preference_row(row, kind, **kw)
    assert reason is None, reason
    return example


def _reason(row, kind, **kw):
    example, reason = normalize_preference_row(row, kind, **kw)
    assert example is None
    return reason


def test_project_wrpo_row():
    ex = _ok(_project(), "wrpo")
    assert ex == {
        "prompt_id": "p1",
        "messages": [USER],
        "responses": ["source says 4", "target says 4", "it is 5"],
        "ref_logps": [-10.0, -8.0, -12.5],
    }


def test_project_row_with_messages_and_derived_prompt_id():
    messages = [{"role": "system", "content": "be brief"}, USER]
    row = _project(messages=messages, prompt="ignored", ref_logps=None)
    del row["prompt_id"]
    ex = _ok(row, "wrpo")
    assert ex["messages"] == messages
    assert ex["prompt_id"] == derive_prompt_id(messages)
    assert ex["ref_logps"] is None


def test_project_pairwise_variants():
    on = _ok(_project(), "pairwise")
    assert on["responses"] == ["target says 4", "it is 5"]
    assert on["ref_logps"] == [-8.0, -12.5]
    hybrid = _ok(_project(), "pairwise", pair="hybrid")
    assert hybrid["responses"] == ["source says 4", "it is 5"]
    assert hybrid["ref_logps"] == [-10.0, -12.5]
    explicit = _ok({"prompt": "q", "chosen": "good", "rejected": "bad", "ref_logps": [-1, -2]}, "pairwise")
    assert explicit["responses"] == ["good", "bad"]
    assert explicit["ref_logps"] == [-1.0, -2.0]


def test_project_sft():
    assert _ok(_project(), "sft")["responses"] == ["source says 4"]
    assert _ok(_project(), "sft")["ref_logps"] is None
    assert _ok({"prompt": "q", "response": "a"}, "sft")["responses"] == ["a"]


@pytest.mark.parametrize(
    "chosen, rejected",
    [
        (["source says 4", "target says 4"], ["it is 5"]),
        ([_assistant("source says 4"), _assistant("target says 4")], [_assistant("it is 5")]),
        (
            [[USER, _assistant("source says 4")], [USER, _assistant("target says 4")]],
            [[USER, _assistant("it is 5")]],
        ),
        ([[_assistant("source says 4")], [_assistant("target says 4")]], [_assistant("it is 5")]),
    ],
    ids=["strings", "assistant-messages", "conversations", "single-turn-lists"],
)
def test_paper_format_response_shapes(chosen, rejected):
    row = _paper(chosen=chosen, rejected=rejected)
    assert _ok(row, "wrpo")["responses"] == ["source says 4", "target says 4", "it is 5"]
    assert _ok(row, "pairwise")["responses"] == ["target says 4", "it is 5"]
    assert _ok(row, "pairwise", pair="hybrid")["responses"] == ["source says 4", "it is 5"]
    assert _ok(row, "sft")["responses"] == ["source says 4"]


def test_paper_format_prompt_forms():
    system = {"role": "system", "content": "be brief"}
    ex = _ok(_paper(prompt=[system, USER]), "wrpo")
    assert ex["messages"] == [system, USER]
    # No prompt column: the prompt turns come from the first full conversation.
    row = _paper(
        chosen=[[system, USER, _assistant("a")], [system, USER, _assistant("b")]],
        rejected=[[system, USER, _assistant("c")]],
    )
    del row["prompt"], row["prompt_id"]
    ex = _ok(row, "wrpo")
    assert ex["messages"] == [system, USER]
    assert ex["responses"] == ["a", "b", "c"]
    assert ex["prompt_id"] == derive_prompt_id([system, USER])


def test_pairwise_conversation_format():
    row = {"prompt": "What is 2+2?", "chosen": [USER, _assistant("4")], "rejected": [USER, _assistant("5")]}
    assert _ok(row, "pairwise")["responses"] == ["4", "5"]


def test_arrays_from_arrow_rows_are_accepted():
    row = _paper(
        prompt=np.array([USER], dtype=object),
        chosen=np.array([_assistant("a"), _assistant("b")], dtype=object),
        rejected=np.array([_assistant("c")], dtype=object),
        ref_logps=np.array([-1.0, -2.0, -3.0]),
    )
    ex = _ok(row, "wrpo")
    assert ex["responses"] == ["a", "b", "c"]
    assert ex["ref_logps"] == [-1.0, -2.0, -3.0]
    assert all(type(x) is float for x in ex["ref_logps"])


@pytest.mark.parametrize(
    "row, kind, expected",
    [
        (_project(y_wt=None), "wrpo", "missing_turn: y_wt"),
        ({k: v for k, v in _project().items() if k != "y_l"}, "pairwise", "missing_turn: y_l"),
        (_paper(chosen=[_assistant("only source")]), "wrpo", "missing_turn: y_wt"),
        (_paper(rejected=[]), "wrpo", "missing_turn: y_l"),
        ({"prompt": "q"}, "sft", "missing_turn: y_ws"),
        (_project(y_wt=""), "wrpo", "empty_response: y_wt"),
        (_project(y_l="  \n"), "wrpo", "empty_response: y_l"),
        (_paper(chosen=[_assistant("a"), _assistant("")]), "wrpo", "empty_response: y_wt"),
        (_project(messages=[{"role": "robot", "content": "hi"}]), "wrpo", "invalid_messages"),
        (_project(messages=[USER, _assistant("x")]), "wrpo", "invalid_messages"),
        (_project(prompt=[{"role": "user", "content": 3}]), "wrpo", "invalid_messages"),
        (_project(prompt=42), "wrpo", "invalid_messages"),
        (_paper(chosen=[_assistant("a"), [USER]]), "wrpo", "invalid_messages"),
        (_project(y_ws=7), "wrpo", "invalid_messages"),
        ("not a row", "wrpo", "invalid_messages"),
        ({k: v for k, v in _project().items() if k != "prompt"}, "wrpo", "missing_prompt"),
        (_project(prompt=" "), "wrpo", "missing_prompt"),
        (_project(ref_logps=[-1.0, -2.0]), "wrpo", "invalid_ref_logps"),
        (_project(ref_logps=[-1.0, float("nan"), -2.0]), "wrpo", "invalid_ref_logps"),
        (_project(ref_logps=[-1.0, 0.5, -2.0]), "wrpo", "invalid_ref_logps"),
        (_project(ref_logps=["a", -1.0, -2.0]), "wrpo", "invalid_ref_logps"),
        (_project(ref_logps="-1,-2,-3"), "wrpo", "invalid_ref_logps"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "ref_logps": [-1, -2, -3]}, "pairwise", "invalid_ref_logps"),
        (_project(prompt_id=""), "wrpo", "invalid_prompt_id"),
        (_project(prompt_id=True), "wrpo", "invalid_prompt_id"),
    ],
)
def test_quarantine_reasons(row, kind, expected):
    reason = _reason(row, kind)
    if ":" in expected:
        assert reason == expected
    else:
        assert reason.split(":")[0] == expected


def test_sft_ignores_ref_logps():
    assert _ok(_project(ref_logps=[-1.0]), "sft")["ref_logps"] is None


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        normalize_preference_row(_project(), "kto")
    with pytest.raises(ValueError):
        normalize_preference_row(_project(), "pairwise", pair="off")


def test_sft_split_is_deterministic_and_order_free():
    ids = [f"prompt-{i}" for i in range(3000)]
    split = {pid for pid in ids if in_sft_split(pid, seed=7)}
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert {pid for pid in shuffled if in_sft_split(pid, seed=7)} == split
    assert abs(len(split) / len(ids) - 1 / 3) < 0.03
    assert {pid for pid in ids if in_sft_split(pid, seed=8)} != split
    assert abs(sum(in_sft_split(pid, seed=7, fraction=0.5) for pid in ids) / len(ids) - 0.5) < 0.04
    # A larger fraction only adds prompts: the split at 1/3 is inside the split at 1/2.
    assert all(in_sft_split(pid, seed=7, fraction=0.5) for pid in split)
    assert not any(in_sft_split(pid, seed=7, fraction=0.0) for pid in ids)
    assert all(in_sft_split(pid, seed=7, fraction=1.0) for pid in ids)
    with pytest.raises(ValueError):
        in_sft_split("x", seed=0, fraction=1.5)

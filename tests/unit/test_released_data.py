"""The paper's released preference data, exactly as published: a `datasets` DatasetDict saved with
`save_to_disk`, splits train/test, `prompt` one user message, `chosen = [y_ws, y_wt]`, `rejected = [y_l]`."""

from pathlib import Path

import pytest

from tests.unit.prompt_plan import read_prompts
from wrpo_ray.config import PreferenceTrainConfig, SftConfig
from wrpo_ray.data.prompts import InputError
from wrpo_ray.train.run import describe_stage, read_rows


def read_examples(path: str, kind: str, *, pair: str = "on", split: str = "train"):
    """The training stage's reading of `path` as configured by `train.data_split` / `sft.data_split`."""
    if kind == "sft":
        cfg = SftConfig(data=path, data_split=split, split_fraction=1.0)
        stage = describe_stage(cfg, "sft")
    else:
        objective = "wrpo" if kind == "wrpo" else "dpo"
        cfg = PreferenceTrainConfig(data=path, data_split=split, loss={"objective": objective, "pair": pair})
        stage = describe_stage(cfg, "preference")
    rows = read_rows(cfg, stage)
    examples = [{k: v for k, v in ex.items() if k != "row"} for ex in rows.examples]
    return examples, rows.quarantine, rows.counts


def _row(i: int, split: str) -> dict:
    return {
        "prompt_id": f"{split}-{i}",
        "prompt": {"role": "user", "content": f"question {split} {i}"},
        "chosen": [{"role": "assistant", "content": f"source answer {i}"},
                   {"role": "assistant", "content": f"target answer {i}"}],
        "rejected": [{"role": "assistant", "content": f"bad answer {i}"}],
    }


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    from datasets import Dataset, DatasetDict

    root = tmp_path_factory.mktemp("released") / "wrpo-data"
    DatasetDict({"train": Dataset.from_list([_row(i, "train") for i in range(5)]),
                 "test": Dataset.from_list([_row(i, "test") for i in range(2)])}).save_to_disk(str(root))
    return root


def _message(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_wrpo_examples_from_the_released_dataset_dict(released):
    examples, quarantine, counts = read_examples(str(released), "wrpo")
    assert quarantine == [] and counts == {"in": 5, "outside_split": 0}
    assert examples[0] == {"prompt_id": "train-0", "messages": _message("question train 0"),
                           "responses": ["source answer 0", "target answer 0", "bad answer 0"], "ref_logps": None}
    assert [e["prompt_id"] for e in examples] == [f"train-{i}" for i in range(5)]


def test_the_split_is_chosen_by_name(released):
    examples, quarantine, counts = read_examples(str(released), "wrpo", split="test")
    assert quarantine == [] and counts["in"] == 2
    assert [e["messages"] for e in examples] == [_message("question test 0"), _message("question test 1")]


def test_pairwise_and_sft_examples_from_the_released_data(released):
    on, q_on, _ = read_examples(str(released), "pairwise", pair="on")
    hybrid, q_hybrid, _ = read_examples(str(released), "pairwise", pair="hybrid")
    sft, q_sft, _ = read_examples(str(released), "sft")
    assert q_on == q_hybrid == q_sft == []
    assert on[3]["responses"] == ["target answer 3", "bad answer 3"]
    assert hybrid[3]["responses"] == ["source answer 3", "bad answer 3"]
    assert sft[3] == {"prompt_id": "train-3", "messages": _message("question train 3"),
                      "responses": ["source answer 3"], "ref_logps": None}
    assert len(on) == len(hybrid) == len(sft) == 5


def test_an_unknown_split_lists_the_available_ones(released):
    with pytest.raises(InputError, match=r"without a split 'validation'; available splits: \['test', 'train'\]"):
        read_examples(str(released), "wrpo", split="validation")


def test_a_split_directory_still_reads_as_one_dataset(released):
    examples, quarantine, _ = read_examples(str(released / "test"), "wrpo")
    assert quarantine == [] and len(examples) == 2


def test_generation_prompts_from_the_released_data(released):
    batch = read_prompts(released, max_prompt_chars=1000, split="test")
    assert batch.counts() == {"in": 2, "out": 2, "quarantined": 0}
    assert batch.valid[1]["prompt_id"] == "test-1"
    assert batch.valid[1]["messages"] == _message("question test 1")
    assert batch.valid[1]["prompt"] == "question test 1"


def test_a_prompt_message_that_is_not_a_user_turn_is_quarantined(tmp_path):
    import json

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": {"role": "assistant", "content": "hi"}}) + "\n")
    batch = read_prompts(path, max_prompt_chars=100)
    assert [q["reason"] for q in batch.quarantined] == ["invalid_messages: the last turn must be a user turn"]


def test_training_settings_name_the_split():
    assert SftConfig().data_split == "train"
    assert SftConfig(data_split="test").data_split == "test"

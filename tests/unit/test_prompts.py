"""Prompt validation, each piece of the Ray Data plan (`read_blocks` -> `check_batch` -> `first_of_each_id`)
called here as the plan calls it, without Ray."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.unit.prompt_plan import read_prompts
from wrpo_ray.data.prompt_source import open_input, read_blocks
from wrpo_ray.data.prompts import InputError, derive_prompt_id


def _jsonl(tmp_path, lines):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def _reasons(batch):
    return sorted(q["reason"].split(":")[0] for q in batch.quarantined)


def test_bad_rows_are_quarantined_with_reasons(tmp_path):
    lines = [
        json.dumps({"prompt_id": "a", "prompt": "hello"}),
        '{"prompt": "broken',
        json.dumps({"prompt": ""}),
        json.dumps({"text": "no prompt field"}),
        json.dumps({"prompt": 42}),
        json.dumps({"prompt_id": "a", "prompt": "different"}),
        json.dumps({"prompt_id": "a", "prompt": "hello"}),
        json.dumps({"prompt": "x" * 50}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        json.dumps({"messages": [{"role": "robot", "content": "hi"}]}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]}),
    ]
    batch = read_prompts(_jsonl(tmp_path, lines), max_prompt_chars=20)
    assert batch.counts() == {"in": 12, "out": 2, "quarantined": 10}
    assert _reasons(batch) == sorted([
        "invalid_json", "empty_prompt", "missing_prompt", "non_text_prompt", "duplicate_prompt_id",
        "duplicate_row", "prompt_too_long", "invalid_messages", "invalid_messages", "invalid_row",
    ])
    assert all(q["raw"] for q in batch.quarantined)
    ids = [r["prompt_id"] for r in batch.valid]
    assert ids[0] == "a"
    assert batch.valid[1]["messages"][0] == {"role": "system", "content": "be brief"}
    assert batch.valid[1]["prompt"] == "q"


def test_prompt_id_is_derived_deterministically(tmp_path):
    p = _jsonl(tmp_path, [json.dumps({"prompt": "hello", "skill": "greet"})])
    a, b = read_prompts(p, max_prompt_chars=100), read_prompts(p, max_prompt_chars=100)
    assert a.valid[0]["prompt_id"] == b.valid[0]["prompt_id"] == derive_prompt_id(
        [{"role": "user", "content": "hello"}])
    assert json.loads(a.valid[0]["metadata"]) == {"skill": "greet"}


def test_rows_keep_their_line_numbers_across_blank_lines_and_blocks(tmp_path, monkeypatch):
    from wrpo_ray.data import prompt_source

    monkeypatch.setattr(prompt_source, "ROWS_PER_BLOCK", 3)
    lines = [json.dumps({"prompt": f"q{i}"}) if i % 4 else "" for i in range(10)]
    p = _jsonl(tmp_path, lines)
    with open_input(str(p)) as f:
        blocks = list(read_blocks(f, str(p)))
    assert [b.num_rows for b in blocks] == [3, 3, 1]
    got = pa.concat_tables(blocks)
    assert got["row_index"].to_pylist() == [i for i in range(10) if i % 4]
    assert got["raw"].to_pylist() == [lines[i] for i in range(10) if i % 4]


def test_a_directory_of_jsonl_files_is_one_input_and_ids_repeat_across_files(tmp_path):
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps({"prompt_id": "x", "prompt": "one"}) + "\n")
    (d / "b.jsonl").write_text(json.dumps({"prompt_id": "x", "prompt": "two"}) + "\n")
    (d / "_SUCCESS").write_text("")
    batch = read_prompts(d, max_prompt_chars=100)
    assert batch.counts() == {"in": 2, "out": 1, "quarantined": 1}
    assert batch.quarantined[0]["reason"].startswith("duplicate_prompt_id: 'x' already used by a different prompt at "
                                                     f"row 0 of {d / 'a.jsonl'}")


def test_parquet_and_datasets_inputs(tmp_path):
    import datasets

    rows = [{"prompt_id": "p1", "prompt": "one"}, {"prompt_id": "p2", "prompt": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    batch = read_prompts(tmp_path / "p.parquet", max_prompt_chars=100)
    assert batch.counts() == {"in": 2, "out": 1, "quarantined": 1}

    datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "chat"}]}]).save_to_disk(
        str(tmp_path / "ds"))
    batch = read_prompts(tmp_path / "ds", max_prompt_chars=100)
    assert batch.valid[0]["prompt"] == "chat"


def test_unsupported_and_missing_inputs(tmp_path):
    (tmp_path / "p.csv").write_text("prompt\nhi\n")
    with pytest.raises(InputError, match="unsupported"):
        read_prompts(tmp_path / "p.csv", max_prompt_chars=10)
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(tmp_path / "none.jsonl", max_prompt_chars=10)

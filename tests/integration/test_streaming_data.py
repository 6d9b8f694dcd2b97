"""The stage's data plans on real Ray Data without engines: prompt input in every format, validation and
quarantine inside the plan, the resume bookkeeping on committed files, and the hand-offs between stages."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wrpo_ray.data.io import read_table, write_table
from wrpo_ray.data.prompt_source import read_prompts
from wrpo_ray.data.prompts import InputError
from wrpo_ray.data.schemas import SCORED, SELECTIONS
from wrpo_ray.generate.commit import commit_batch, start_attempt

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from wrpo_ray.runtime import ensure_ray

    ensure_ray()
    yield


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_rows_are_quarantined_by_the_plan(tmp_path):
    p = _jsonl(tmp_path / "p.jsonl", [
        {"prompt_id": "a", "prompt": "hello"}, '{"prompt": "broken', {"prompt": ""}, "",
        {"prompt_id": "a", "prompt": "other"}, {"prompt_id": "a", "prompt": "hello"}, {"prompt": "fine"},
    ])
    checked = read_prompts(str(p), max_prompt_chars=100)
    assert (checked.rows_in, checked.rows_valid, checked.rows_quarantined) == (6, 2, 4)
    q = sorted(checked.quarantine.take_all(), key=lambda r: r["row_index"])
    assert [(r["row_index"], r["reason"].split(":")[0]) for r in q] == [
        (1, "invalid_json"), (2, "empty_prompt"), (4, "duplicate_prompt_id"), (5, "duplicate_row")]
    assert all(r["stage"] == "input" and r["source"] == str(p) and r["raw"] for r in q)
    with pytest.raises(InputError, match=r"4 bad prompt rows .*\(strict mode\)"):
        read_prompts(str(p), max_prompt_chars=100, strict=True)


def test_parquet_directories_datasets_and_uris(tmp_path):
    import datasets

    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt_id": "p1", "prompt": "one"}]), d / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{"prompt_id": "p2", "prompt": None}]), d / "b.parquet")
    checked = read_prompts(str(d), max_prompt_chars=100)
    assert (checked.rows_in, checked.rows_valid) == (2, 1)
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "t"}]),
                          "test": datasets.Dataset.from_list([{"prompt": {"role": "user", "content": "q"}}])}
                         ).save_to_disk(str(tmp_path / "dd"))
    (row,) = read_prompts(str(tmp_path / "dd"), max_prompt_chars=100, split="test").valid.take_all()
    assert row["messages"] == [{"role": "user", "content": "q"}]
    uri = "file://" + str(_jsonl(tmp_path / "u.jsonl", [{"prompt": "x"}]))
    assert read_prompts(uri, max_prompt_chars=100).rows_valid == 1
    empty = read_prompts(str(_jsonl(tmp_path / "e.jsonl", [])), max_prompt_chars=100)
    assert (empty.rows_in, empty.rows_valid, empty.valid.count()) == (0, 0, 0)


def _scored(pid: str, model: str, idx: list[int]) -> pa.Table:
    return pa.Table.from_pylist([{
        "prompt_id": pid, "prompt": pid, "messages": [{"role": "user", "content": pid}], "metadata": "{}",
        "model": model, "sample_idx": i, "response": f"{pid}{model}{i}", "num_tokens": 1, "prompt_tokens": 1,
        "finish_reason": "stop", "gen_seconds": 0.0, "error": None, "reward": float(i)} for i in idx], schema=SCORED)


def test_resume_bookkeeping_runs_in_the_plan(tmp_path):
    """Pending pairs and the read-back of committed samples, decided per prompt by Ray Data."""
    from wrpo_ray.generate.pipeline import pending_by_source, resolve, tally

    ids = [f"q{i}" for i in range(6)]
    checked = read_prompts(str(_jsonl(tmp_path / "p.jsonl", [{"prompt_id": i, "prompt": i} for i in ids])),
                           max_prompt_chars=100)
    scored = tmp_path / "scored"
    per_model = {"m": 2, "n": 2}
    start_attempt(scored, "fp")
    pending, count = pending_by_source(checked, scored, per_model)
    assert count == 12 and set(pending) == {"m", "n"}
    commit_batch(_scored("q0", "m", [0, 1]), str(scored), 0)
    commit_batch(_scored("q0", "m", [0, 1]), str(scored), 0)   # a retried commit: the batch twice
    commit_batch(_scored("q1", "m", [0]), str(scored), 0)      # half a pair
    commit_batch(_scored("q1", "n", [0, 1]), str(scored), 0)
    pending, count = pending_by_source(checked, scored, per_model)
    assert count == 12 - 2
    assert sorted(r["prompt_id"] for r in pending["m"].take_all()) == ids[1:]
    assert sorted(r["prompt_id"] for r in pending["n"].take_all()) == [i for i in ids if i != "q1"]
    counts = tally(resolve(checked, scored, per_model, keep_truncated=False))
    assert counts["sample"] == 4 and counts["sample:m"] == 2 and counts["selection"] == 2
    assert counts["reason:generate:incomplete_samples"] == 1
    assert counts["reason:select:no_selectable_samples"] == 4


def _sel(pid, best, reward, worst=None, reward_worst=None, candidates=2):
    return {"prompt_id": pid, "prompt": f"p{pid}", "messages": [{"role": "user", "content": f"p{pid}"}],
            "metadata": json.dumps({"answer": "a"}), "y_ws": best, "reward_ws": reward, "source_model": "m",
            "source_sample_idx": 0, "num_tokens_ws": 1, "num_candidates": candidates, "rewards_by_model": "{}",
            "y_worst": worst or best, "reward_worst": reward if reward_worst is None else reward_worst,
            "worst_model": "m"}


def test_hand_offs_between_stages(tmp_path):
    from wrpo_ray.data.handoff import build_quadruples, write_target_prompts
    from wrpo_ray.train.preference_data import in_sft_split

    write_table(pa.Table.from_pylist([_sel("1", "src1", 0.9), _sel("2", "src2", 0.8), _sel("3", "src3", 0.1),
                                      _sel("4", "src4", 0.5)], schema=SELECTIONS), tmp_path / "sources")
    write_table(pa.Table.from_pylist([_sel("1", "t1-best", 0.5, "t1-worst", 0.1), _sel("2", "t2", 0.3, "t2b", 0.3),
                                      _sel("3", "t3", 0.9, candidates=1)], schema=SELECTIONS), tmp_path / "target")
    summary = build_quadruples(tmp_path / "sources", tmp_path / "target", tmp_path / "pref")
    assert summary == {"quadruples": 1, "quarantined": 2, "target_rows": 3, "y_ws_above_y_wt": 1}
    (row,) = read_table(tmp_path / "pref" / "data").to_pylist()
    assert (row["y_ws"], row["y_wt"], row["y_l"]) == ("src1", "t1-best", "t1-worst")

    ids = [str(i) for i in range(40)]
    write_table(pa.Table.from_pylist([_sel(i, "y", 1.0) for i in ids], schema=SELECTIONS), tmp_path / "sel")
    assert write_target_prompts(tmp_path / "sel", tmp_path / "tp", seed=0, fraction=1 / 3)["prompts"] > 0
    checked = read_prompts(str(tmp_path / "tp"), max_prompt_chars=100)
    got = checked.valid.take_all()
    assert {r["prompt_id"] for r in got} == {i for i in ids if not in_sft_split(i, 0, 1 / 3)}
    assert all(json.loads(r["metadata"]) == {"answer": "a"} for r in got)

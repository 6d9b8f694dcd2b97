"""Per-prompt decisions of the generation stage (`pending_pairs`, `resolve_prompt`) on committed rows."""

import pyarrow as pa

from wrpo_ray.data.schemas import PROMPTS, SCORED
from wrpo_ray.generate.commit import TAGGED, as_tagged
from wrpo_ray.generate.resolve import PENDING, QUARANTINED, RESOLVED, SAMPLE, SELECTION, pending_pairs, resolve_prompt

PROMPT = {"prompt_id": "p", "prompt": "q", "messages": [{"role": "user", "content": "q"}], "metadata": "{}"}
PER_MODEL = {"m": 2, "n": 2}


def _sample(model: str, idx: int, attempt: int, reward: float | None = 0.5, error: str | None = None,
            finish: str = "stop", file: str = "f0") -> dict:
    return {**PROMPT, "model": model, "sample_idx": idx, "response": f"{model}{idx}@{attempt}", "num_tokens": 3,
            "prompt_tokens": 1, "finish_reason": finish, "gen_seconds": 0.0, "error": error, "reward": reward,
            "attempt": attempt, "file": file}


def _group(*samples: dict, with_prompt: bool = True) -> list[dict]:
    prompt = as_tagged(pa.Table.from_pylist([PROMPT], schema=PROMPTS)).to_pylist() if with_prompt else []
    return pa.Table.from_pylist([*prompt, *samples], schema=TAGGED).to_pylist()


def test_pending_pairs_are_the_sources_without_a_complete_attempt():
    group = _group(_sample("m", 0, 0), _sample("m", 1, 0), _sample("n", 0, 0))
    assert [(r["prompt_id"], r["model"]) for r in pending_pairs(group, PER_MODEL)] == [("p", "n")]
    assert [r["model"] for r in pending_pairs(_group(), PER_MODEL)] == ["m", "n"]
    assert pending_pairs(_group(_sample("m", 0, 0), with_prompt=False), PER_MODEL) == []
    assert pa.Table.from_pylist(pending_pairs(_group(), PER_MODEL), schema=PENDING).num_rows == 2


def test_resolve_keeps_the_newest_complete_attempt_and_selects_from_it():
    group = _group(_sample("m", 0, 0, 0.9), _sample("m", 1, 0, 0.1),   # attempt 0 complete ...
                   _sample("m", 0, 1, 0.2), _sample("m", 1, 1, 0.3),   # ... attempt 1 too: it wins
                   _sample("n", 0, 0, 0.4))                             # n never completed
    rows = resolve_prompt(group, PER_MODEL)
    assert pa.Table.from_pylist(rows, schema=RESOLVED).num_rows == len(rows)
    samples = [r for r in rows if r["kind"] == SAMPLE]
    assert sorted(r["response"] for r in samples) == ["m0@1", "m1@1"]
    (chosen,) = [r for r in rows if r["kind"] == SELECTION]
    assert chosen["y_ws"] == "m1@1" and chosen["y_worst"] == "m0@1" and chosen["num_candidates"] == 2
    (aside,) = [r for r in rows if r["kind"] == QUARANTINED]
    assert aside["model"] == "n" and aside["reason"].startswith("incomplete_samples")
    assert {f.name for f in SCORED} <= set(RESOLVED.names)


def test_resolve_sets_aside_errors_truncations_and_prompts_without_candidates():
    group = _group(_sample("m", 0, 0, None, error="prompt_too_long_for_model: 9 tokens > 8"),
                   _sample("n", 0, 0, 0.7, finish="length"), _sample("n", 1, 0, 0.6, finish="length"))
    rows = resolve_prompt(group, PER_MODEL)
    reasons = sorted((r["stage"], r["reason"].split(":")[0]) for r in rows if r["kind"] == QUARANTINED)
    assert reasons == [("generate", "prompt_too_long_for_model"), ("select", "no_selectable_samples"),
                       ("select", "truncated_sample"), ("select", "truncated_sample")]
    assert sum(r["kind"] == SAMPLE for r in rows) == 2           # cut samples stay in samples/
    kept = resolve_prompt(group, PER_MODEL, keep_truncated=True)
    assert [r["y_ws"] for r in kept if r["kind"] == SELECTION] == ["n0@0"]

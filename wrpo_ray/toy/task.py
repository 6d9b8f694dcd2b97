"""A synthetic instruction task with several distinct skills and checkable answers.

Each prompt row carries its `skill` and exact `answer`, so a verifier can judge any model's response
without a reward model.
"""

from __future__ import annotations

import difflib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rng: random.Random, lo: int = 3, hi: int = 7) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(lo, hi)))


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"Reverse the letters: {w}", w[::-1]


def _upper(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"Uppercase: {w}", w.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"Add: {a}+{b}", str(a + b)


def _sort(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"Sort the letters: {w}", "".join(sorted(w))


SKILLS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "reverse": _reverse,
    "upper": _upper,
    "add": _add,
    "sort": _sort,
}


def make_examples(n: int, seed: int, skills: list[str] | None = None) -> list[dict[str, Any]]:
    """`n` prompts cycling through `skills`, deterministic in `seed`."""
    rng = random.Random(seed)
    names = skills or sorted(SKILLS)
    rows = []
    for i in range(n):
        skill = names[i % len(names)]
        prompt, answer = SKILLS[skill](rng)
        rows.append({"prompt_id": f"toy-{seed}-{i:05d}", "prompt": prompt, "skill": skill, "answer": answer})
    return rows


def make_preference_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Toy preference quadruples: y_ws the exact answer, y_wt half of it, y_l a refusal."""
    rows = []
    for ex in make_examples(n, seed):
        answer = ex["answer"]
        rows.append({
            "prompt_id": ex["prompt_id"], "prompt": ex["prompt"], "skill": ex["skill"],
            "y_ws": answer, "y_wt": answer[: max(1, len(answer) // 2)], "y_l": "no idea, sorry",
        })
    return rows


def corpus(seed: int = 0, n: int = 2000) -> Iterator[str]:
    """Text to train the toy tokenizers on: task prompts, answers and some filler prose."""
    for row in make_examples(n, seed):
        yield row["prompt"]
        yield row["answer"]
    yield from (
        "The quick brown fox jumps over the lazy dog.",
        "Answer the question with one word.",
        "0 1 2 3 4 5 6 7 8 9 10 100 1000",
        _LETTERS + _LETTERS.upper(),
    )


def verify(row: dict[str, Any], response: str) -> float:
    """Graded correctness: 1.0 for the exact answer, else up to 0.5 by character similarity."""
    answer = str(row["answer"])
    got = response.strip()
    if got == answer:
        return 1.0
    return 0.5 * difflib.SequenceMatcher(None, got, answer).ratio()


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


BAD_PROMPT_LINES = ('{"prompt_id": "bad-json", "prompt": "unterminated', '{"prompt_id": "bad-empty", "prompt": "   "}')


def write_demo_data(out_dir: str | Path, n_train: int = 3000, n_eval: int = 400) -> None:
    """The demo's prompt files: `tiny-prompts.jsonl` (seed 1, plus two bad rows the input stage must
    quarantine) and `tiny-eval.jsonl` (seed 1001, no prompt text shared with the training prompts)."""
    out = Path(out_dir)
    train = make_examples(n_train, seed=1)
    seen = {r["prompt"] for r in train}
    held_out = [r for r in make_examples(2 * n_eval, seed=1001) if r["prompt"] not in seen][:n_eval]
    write_jsonl(train, out / "tiny-prompts.jsonl")
    with open(out / "tiny-prompts.jsonl", "a") as f:
        f.write("\n".join(BAD_PROMPT_LINES) + "\n")
    write_jsonl(held_out, out / "tiny-eval.jsonl")


def write_study_data(out_dir: str | Path, n_train: int = 3000, n_validation: int = 200, n_test: int = 400
                     ) -> dict[str, Path]:
    """The fusion study's prompt files, no prompt text twice: `train.jsonl` (seed 1),
    `validation.jsonl` (seed 2001, to choose settings on) and `test.jsonl` (seed 1001, to report on)."""
    out = Path(out_dir)
    seen: set[str] = set()
    files = {}
    for name, n, seed in (("train", n_train, 1), ("validation", n_validation, 2001), ("test", n_test, 1001)):
        rows = []
        for row in make_examples(2 * n, seed=seed):
            if len(rows) < n and row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
        if len(rows) < n:
            raise ValueError(f"only {len(rows)} distinct {name} prompts, {n} asked")
        files[name] = out / f"{name}.jsonl"
        write_jsonl(rows, files[name])
    return files


if __name__ == "__main__":
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "jobs/data"
    write_demo_data(out)
    write_study_data(Path(out) / "study")

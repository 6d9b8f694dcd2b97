"""The prompt-reading plan's pieces composed as Ray Data composes them, in one process: what the unit tests
of validation read prompts with."""

from dataclasses import dataclass, field

from wrpo_ray.data.prompt_source import input_files, open_input, read_blocks
from wrpo_ray.data.prompts import check_batch, first_of_each_id


@dataclass
class Checked:
    valid: list = field(default_factory=list)
    quarantined: list = field(default_factory=list)
    rows_in: int = 0

    def counts(self):
        return {"in": self.rows_in, "out": len(self.valid), "quarantined": len(self.quarantined)}


def read_prompts(path, max_prompt_chars: int, split: str = "train") -> Checked:
    rows = []
    for file in input_files(str(path), split):
        with open_input(file) as f:
            rows += [r for block in read_blocks(f, file) for r in check_batch(block, max_prompt_chars).to_pylist()]
    out = Checked(rows_in=len(rows))
    by_id: dict = {}
    for r in rows:
        by_id.setdefault(r["group_key"], []).append(r)
    for group in by_id.values():
        for r in first_of_each_id(group):
            (out.quarantined if r["reason"] else out.valid).append(r)
    out.valid.sort(key=lambda r: (r["source"], r["row_index"]))
    return out

"""Which rows each worker trains on at every optimizer step: the per-epoch order and the resume cursor.

One object owns the arithmetic, so that a run stopped anywhere (inside epoch 2 or 3 included) resumes on
exactly the rows an uninterrupted run would have seen next.

Every epoch takes a fresh permutation of all rows, drawn from ``(seed, epoch)`` alone, like PyTorch's
``DistributedSampler`` with ``set_epoch``. The first ``steps_per_epoch * rows_per_step`` rows of the
permutation are trained on; the rest (fewer than one optimizer step) wait for another epoch's order.
Within optimizer step ``s``, micro-batch ``k`` of rank ``r`` is the slice
``rows_per_step * s + micro_batch_size * (k * world_size + r)`` of the permutation. The order depends on
no block layout, no scheduling and no earlier run, which Ray Data's ``streaming_split`` does not promise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class DataOrder:
    """The deterministic schedule of rows: ``num_rows`` rows, ``world_size`` ranks, DeepSpeed's batch shape."""

    num_rows: int
    world_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    seed: int
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.num_rows < 0:
            raise ValueError(f"num_rows must be >= 0, got {self.num_rows}")
        for name in ("world_size", "micro_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def rows_per_step(self) -> int:
        return self.world_size * self.micro_batch_size * self.gradient_accumulation_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows // self.rows_per_step

    @property
    def unused_per_epoch(self) -> int:
        return self.num_rows - self.steps_per_epoch * self.rows_per_step

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, step within the epoch)`` of the optimizer step that follows ``step`` completed ones."""
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_rows} rows < one optimizer step ({self.rows_per_step} rows)")
        return divmod(step, self.steps_per_epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch``: the same for every rank, every run and every resume."""
        return _permutation(self.num_rows, self.seed, epoch, self.shuffle)

    def micro_batch(self, step: int, accumulation_index: int, rank: int) -> np.ndarray:
        """Row indices of micro-batch ``accumulation_index`` of rank ``rank`` in optimizer step ``step`` (0-based)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world of {self.world_size}")
        if not 0 <= accumulation_index < self.gradient_accumulation_steps:
            raise ValueError(f"accumulation index {accumulation_index} outside "
                             f"0..{self.gradient_accumulation_steps - 1}")
        epoch, in_epoch = self.position(step)
        start = in_epoch * self.rows_per_step + (accumulation_index * self.world_size + rank) * self.micro_batch_size
        return self.permutation(epoch)[start:start + self.micro_batch_size]

    def schedule(self, start_step: int, end_step: int, rank: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(step, accumulation index, row indices)`` of rank ``rank`` for steps ``start_step..end_step - 1``."""
        for step in range(start_step, end_step):
            for k in range(self.gradient_accumulation_steps):
                yield step, k, self.micro_batch(step, k, rank)


@lru_cache(maxsize=2)
def _permutation(num_rows: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_rows) if shuffle else np.arange(num_rows)
    order.flags.writeable = False
    return order

"""The per-epoch data order and the resume cursor (wrpo_ray/train/cursor.py)."""

import numpy as np
import pytest

from wrpo_ray.train.cursor import DataOrder


def _order(**kw):
    base = dict(num_rows=50, world_size=2, micro_batch_size=3, gradient_accumulation_steps=2, seed=7)
    return DataOrder(**{**base, **kw})


def test_step_arithmetic():
    order = _order()
    assert order.rows_per_step == 12 and order.steps_per_epoch == 4 and order.unused_per_epoch == 2
    assert order.position(0) == (0, 0)
    assert order.position(3) == (0, 3)
    assert order.position(4) == (1, 0)
    assert order.position(9) == (2, 1)


def test_every_epoch_uses_distinct_rows_across_ranks_and_micro_batches():
    order = _order()
    for epoch in range(3):
        steps = range(epoch * order.steps_per_epoch, (epoch + 1) * order.steps_per_epoch)
        rows = [r for rank in range(order.world_size)
                for _, _, idx in order.schedule(steps.start, steps.stop, rank) for r in idx.tolist()]
        assert len(rows) == len(set(rows)) == order.steps_per_epoch * order.rows_per_step
        assert set(rows) <= set(range(order.num_rows))


def test_epochs_are_shuffled_differently_and_reproducibly():
    order = _order()
    assert not np.array_equal(order.permutation(0), order.permutation(1))
    assert np.array_equal(order.permutation(1), _order().permutation(1))
    assert not np.array_equal(order.permutation(0), _order(seed=8).permutation(0))
    assert np.array_equal(_order(shuffle=False).permutation(2), np.arange(50))


def test_resume_inside_a_later_epoch_continues_on_the_uninterrupted_rows():
    """A run stopped after step 9 (epoch 2, step 1) resumes on exactly what an uninterrupted run trains next."""
    order = _order()
    uninterrupted = [(s, k, idx.tolist()) for s, k, idx in order.schedule(0, 12, rank=1)]
    resumed = [(s, k, idx.tolist()) for s, k, idx in _order().schedule(9, 12, rank=1)]
    assert resumed == [u for u in uninterrupted if u[0] >= 9]
    assert len(resumed) == 3 * order.gradient_accumulation_steps


def test_bad_arguments():
    with pytest.raises(ValueError):
        _order(world_size=0)
    with pytest.raises(ValueError):
        _order().micro_batch(0, 0, rank=2)
    with pytest.raises(ValueError):
        _order().micro_batch(0, 2, rank=0)
    with pytest.raises(ValueError, match="one optimizer step"):
        _order(num_rows=5).position(0)
    with pytest.raises(ValueError, match="num_rows"):
        _order(num_rows=-1)
    assert _order(num_rows=0).steps_per_epoch == 0  # every row quarantined: the driver reports it

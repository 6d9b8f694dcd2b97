"""Waves of source pools: which sources generate together, so a cluster smaller than all pools finishes.

Ray Data starts every operator's minimum actors when a plan begins. With all ten sources of the paper config in
one plan, their minima need 41 GPUs at once; on a cluster that can never hold them, the pools that do not fit
wait for ever while the others hold their GPUs. A wave is a plan of its own over the sources whose minimum
GPUs, with the reward pool's, fit `generate.wave_gpus`; each wave commits its batches and ends, which releases
its actors before the next one starts, and within a wave pools still grow to their `max` as capacity arrives.
"""

from __future__ import annotations

from typing import Any


def _min_gpus(pool: Any) -> float:
    return pool.num_gpus * pool.min_actors


def plan_waves(cfg: Any) -> list[list[str]]:
    """Source names per wave, in config order, packed first-fit into `cfg.wave_gpus` (one wave when unset).

    Raises ValueError when one source's pool and the reward pool alone exceed the budget."""
    names = [s.name for s in cfg.sources]
    if cfg.wave_gpus is None:
        return [names]
    reward = _min_gpus(cfg.reward.model.pool) if cfg.reward.model is not None else 0.0
    waves: list[list[str]] = []
    used = reward
    for src in cfg.sources:
        need = _min_gpus(src.pool)
        if reward + need > cfg.wave_gpus:
            raise ValueError(f"generate.wave_gpus={cfg.wave_gpus:g} cannot hold source {src.name!r} ({need:g} GPUs "
                             f"at its minimum size) with the reward pool ({reward:g})")
        if not waves or used + need > cfg.wave_gpus:
            waves.append([])
            used = reward
        waves[-1].append(src.name)
        used += need
    return waves

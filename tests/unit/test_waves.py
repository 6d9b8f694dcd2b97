"""Waves of source pools under a GPU budget (`generate.wave_gpus`)."""

import pytest
from pydantic import ValidationError

from wrpo_ray.config import GenerateConfig, load_config
from wrpo_ray.generate.waves import plan_waves


def _cfg(wave_gpus, gpus=(8, 2, 4), reward_gpus=1, concurrency=1):
    return GenerateConfig.model_validate({
        "data": {"prompts": "s3://bucket/prompts.parquet"}, "output_dir": "o", "wave_gpus": wave_gpus,
        "sources": [{"name": f"s{i}", "path": "toy://llama", "pool": {"num_gpus": g, "concurrency": concurrency}}
                    for i, g in enumerate(gpus)],
        "reward": {"model": {"name": "rm", "path": "toy://reward", "pool": {"num_gpus": reward_gpus}}},
    })


def test_without_a_budget_every_source_runs_at_once():
    assert plan_waves(_cfg(None)) == [["s0", "s1", "s2"]]


def test_sources_are_packed_in_order_into_the_budget_with_the_reward_pool():
    assert plan_waves(_cfg(11)) == [["s0", "s1"], ["s2"]]
    assert plan_waves(_cfg(9)) == [["s0"], ["s1", "s2"]]
    assert plan_waves(_cfg(15)) == [["s0", "s1", "s2"]]


def test_the_budget_counts_each_pool_at_its_minimum_size():
    assert plan_waves(_cfg(11, concurrency=[1, 4])) == [["s0", "s1"], ["s2"]]


def test_a_source_that_cannot_fit_is_refused_at_load():
    with pytest.raises(ValidationError, match="cannot hold source 's0'"):
        _cfg(8)


def test_the_paper_config_runs_in_waves_no_larger_than_its_budget():
    cfg = load_config("jobs/configs/paper-llama3-8b.yaml", ["generate.data.prompts=s3://bucket/prompts.parquet",
                                                            "eval.prompts=jobs/data/tiny-eval.jsonl"]).generate
    assert len(plan_waves(cfg)) > 1
    waves = plan_waves(cfg)
    assert sorted(n for w in waves for n in w) == sorted(s.name for s in cfg.sources)
    by_name = {s.name: s.pool for s in cfg.sources}
    for wave in waves:
        assert sum(by_name[n].num_gpus * by_name[n].min_actors for n in wave) <= cfg.wave_gpus

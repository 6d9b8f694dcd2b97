"""Pure pieces of the training recipe and worker: resources, DeepSpeed settings, schedule (no Ray)."""

import dataclasses

import pytest
import torch

from wrpo_ray.config import PreferenceTrainConfig
from wrpo_ray.train.run import reference_resources
from wrpo_ray.train.worker import LoopSpec, cosine_with_warmup, deepspeed_config


def _spec(**kw):
    base = {f.name: 1 for f in dataclasses.fields(LoopSpec)}
    return LoopSpec(**{**base, "max_grad_norm": 1.0, "learning_rate": 1e-3, "weight_decay": 0.0, **kw})


def test_reference_stage_reserves_what_a_training_worker_reserves():
    policy = {"name": "t", "path": "toy://target"}
    gpu = PreferenceTrainConfig(policy=policy, num_workers=8, use_gpu=True, cpus_per_worker=8,
                                resources_per_worker={"wrpo_train": 1})
    assert reference_resources(gpu) == {"actors": 8, "num_cpus": 8, "num_gpus": 1, "custom": {"wrpo_train": 1}}
    cpu = PreferenceTrainConfig(policy=policy, num_workers=2, cpus_per_worker=0.5)
    assert reference_resources(cpu) == {"actors": 2, "num_cpus": 0.5, "num_gpus": 0, "custom": {}}


@pytest.mark.parametrize("dtype,bf16,fp16", [(torch.float32, False, False), (torch.bfloat16, True, False),
                                              (torch.float16, False, True)])
def test_deepspeed_precision_follows_the_configured_dtype(dtype, bf16, fp16):
    cfg = deepspeed_config(_spec(zero_stage=3, micro_batch_size=2, gradient_accumulation_steps=4), dtype)
    assert cfg["bf16"]["enabled"] is bf16 and cfg["fp16"]["enabled"] is fp16
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 4


def test_cosine_with_warmup():
    f = cosine_with_warmup(10, 0.2)
    assert f(0) == pytest.approx(1 / 3) and f(1) == pytest.approx(2 / 3)
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.0)

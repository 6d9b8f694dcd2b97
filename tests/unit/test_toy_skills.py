"""Fine-tuning of the skilled toy models: deterministic, learns, answers end with the end-of-turn token."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from wrpo_ray.toy.build import init_model, model_dir_name
from wrpo_ray.toy.registry import CHATML_STYLE, GEMMA_STYLE, LLAMA_STYLE, MISTRAL_STYLE, TOY_MODELS, ToyModelSpec
from wrpo_ray.toy.skills import encode_rows, lr_factor, skilled_models, train_skilled, training_rows
from wrpo_ray.toy.task import SKILLS, make_examples
from wrpo_ray.train.batching import collate

TINY = ToyModelSpec(
    arch="llama", vocab_size=288, style=LLAMA_STYLE, seed=7, num_layers=1, intermediate_size=128,
    skills=("upper",), train_steps=40, batch_size=8, lr=3e-3,
)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    runs = []
    for i in range(2):
        out = tmp_path_factory.mktemp(f"run{i}")
        runs.append((train_skilled(TINY, out), load_file(out / "model.safetensors")))
    return runs


def test_training_is_deterministic(two_runs):
    (losses_a, weights_a), (losses_b, weights_b) = two_runs
    assert losses_a == losses_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_loss_drops(two_runs):
    losses, _ = two_runs[0]
    assert len(losses) == TINY.train_steps
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]


def test_training_changes_the_random_weights(two_runs):
    _, trained = two_runs[0]
    model, _ = init_model(TINY)
    initial = model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)


def test_trained_on_the_tokens_its_loaders_see(tmp_path):
    """AutoTokenizer loads a saved Qwen2 model's tokenizer as a Qwen2Tokenizer, which splits digits apart
    unlike the one built in memory. With lr 0 the saved model is the initial one, so its loss on the first
    batch, encoded by the loaded tokenizer, must be the first training loss."""
    spec = dataclasses.replace(
        TINY, arch="qwen2", style=CHATML_STYLE, vocab_size=320, skills=("add",), train_steps=1, lr=0.0
    )
    losses = train_skilled(spec, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    rows = training_rows(spec)[: spec.batch_size]
    assert encode_rows(init_model(spec)[1], rows) != encode_rows(tokenizer, rows)
    batch = collate(encode_rows(tokenizer, rows), tokenizer.pad_token_id)
    with torch.no_grad():
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert loss.item() == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("style", [LLAMA_STYLE, CHATML_STYLE, MISTRAL_STYLE, GEMMA_STYLE], ids=lambda s: s.eos)
def test_labels_are_the_answer_then_end_of_turn(style):
    spec = dataclasses.replace(TINY, style=style, arch="qwen2")
    _, tokenizer = init_model(spec)
    rows = make_examples(8, seed=3)
    for row, enc in zip(rows, encode_rows(tokenizer, rows), strict=True):
        labelled = [t for t in enc["labels"][0] if t != -100]
        text = tokenizer.decode(labelled, skip_special_tokens=False)
        assert text.startswith(row["answer"] + style.eos)
        assert tokenizer.eos_token_id in labelled


def test_lr_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 100) for s in range(100)]
    assert factors[0] < factors[4] == 1.0
    assert factors[-1] < 0.02 and factors == factors[:5] + sorted(factors[5:], reverse=True)


def test_registry_skills():
    skilled = skilled_models()
    assert skilled, "the embedded demo needs skilled sources and a target"
    for spec in skilled.values():
        assert spec.skills and set(spec.skills) <= set(SKILLS)
        assert spec.hidden_size // spec.num_heads == 64
    for name in ("llama", "qwen2", "mistral", "gemma2", "target", "reward"):
        assert TOY_MODELS[name].train_steps == 0
        assert model_dir_name(name, TOY_MODELS[name]).startswith(f"{name}-v")


def test_demo_data_files_are_the_committed_ones(tmp_path):
    """`python -m wrpo_ray.toy.task jobs/data` rebuilds the demo's prompt files byte for byte."""
    from wrpo_ray.toy.task import write_demo_data

    write_demo_data(tmp_path)
    repo = Path(__file__).resolve().parents[2] / "jobs" / "data"
    for name in ("tiny-prompts.jsonl", "tiny-eval.jsonl"):
        assert (tmp_path / name).read_text() == (repo / name).read_text()
    train = [json.loads(line) for line in (tmp_path / "tiny-prompts.jsonl").read_text().splitlines()[:-2]]
    held_out = [json.loads(line) for line in (tmp_path / "tiny-eval.jsonl").read_text().splitlines()]
    assert len(train) == 3000 and len(held_out) == 400
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert {r["skill"] for r in held_out} == {"add", "reverse", "sort", "upper"}


def test_study_data_files_are_the_committed_ones(tmp_path):
    """The fusion study's train / validation / test prompts share no prompt text, and are the committed files."""
    from wrpo_ray.toy.task import write_study_data

    files = write_study_data(tmp_path)
    repo = Path(__file__).resolve().parents[2] / "jobs" / "data" / "study"
    prompts = {}
    for name, path in files.items():
        assert path.read_text() == (repo / path.name).read_text()
        prompts[name] = {json.loads(line)["prompt"] for line in path.read_text().splitlines()}
    assert {k: len(v) for k, v in prompts.items()} == {"train": 3000, "validation": 200, "test": 400}
    assert not prompts["train"] & prompts["validation"] and not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]

"""Parity with a real peer: TRL's ``DPOTrainer`` and this project's DPO path give the same numbers.

The same tiny model, tokenizer and conversational (prompt, chosen, rejected) rows go through

* TRL: a ``DPOTrainer`` built on them; one batch from its own train dataloader goes through its own
  ``compute_loss``. Per-sequence log-probs are read from the ``log_probs`` its fused LM head returns
  (forward hooks on the policy and the reference), exactly the tensors it sums into its loss;
* this project: ``tokenize_example`` -> ``pack`` -> ``SequenceLogprobs`` (the fused kernel) for the
  policy and the reference -> ``losses.compute_loss`` with the DPO objective.

The policy is the reference plus small seeded noise, so the DPO loss is not the trivial ``log 2``.

What is compared, and where the two differ by design:

* Scored tokens. Both score the completion the chat template adds after the generation prompt,
  end-of-turn text included (``<|im_end|>\\n`` for ChatML, ``<|eot_id|>`` for Llama 3), and neither adds
  a BOS beyond the one the template writes. TRL tokenises ``prompt + completion`` as one text and starts
  the completion where that diverges from the tokenised prompt; this project tokenises the prompt and the
  completion texts separately. On a tokenizer that merges tokens across the boundary the two could split
  differently; :func:`test_tokenisations_agree` checks the toy tokenizers token by token, and
  :func:`test_logps_on_trls_own_tokens` compares the log-probs on TRL's own ``input_ids`` and
  ``completion_mask`` whatever the tokenisation.
* Truncation. TRL 1.16 has no prompt limit: it cuts ``prompt + completion`` to ``max_length`` keeping the
  start, and drops an example whose prompt alone fills ``max_length``. This project first keeps the last
  ``max_prompt_length`` prompt tokens, then cuts each completion to fit ``max_length``. With
  ``max_prompt_length == max_length`` the two agree (completions cut from the right, the same examples
  dropped): :func:`test_truncation_parity`. A prompt longer than ``max_prompt_length`` but shorter than
  ``max_length`` is left-truncated here and kept whole by TRL, so that case is not compared.
* Padding. Both pad on the right and mask the padding out of attention and labels. A tokenizer without
  a pad token (Llama 3) gets EOS as TRL's pad, as TRL users do, and EOS as this project's padding value.
* Metrics. TRL's batch layout is ``[chosen..., rejected...]``, this project's example-major
  ``[c0, r0, c1, r1, ...]``; the test maps one onto the other.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

pytest.importorskip(
    "trl", reason="TRL (the `bench` extra, installed by `make install`) is not importable here", exc_type=ImportError
)

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOTrainer  # noqa: E402

from wrpo_ray.toy.build import toy_model_path  # noqa: E402
from wrpo_ray.toy.task import make_preference_rows  # noqa: E402
from wrpo_ray.toy.trl_peer import conversational, dpo_trainer, encode_rows, perturbed  # noqa: E402
from wrpo_ray.train.batching import IGNORE_INDEX, collate, tokenize_example  # noqa: E402
from wrpo_ray.train.losses import LossConfig, PreferenceLogps, compute_loss  # noqa: E402
from wrpo_ray.train.packing import PackedBatch, pack  # noqa: E402
from wrpo_ray.train.policy import SequenceLogprobs  # noqa: E402

BETA = 0.1
NOISE = 0.02
LOGP_ATOL = 1e-4
LOSS_ATOL = 1e-6
NO_LIMIT = 4096


def _rows(n: int = 6, seed: int = 3) -> list[dict]:
    """Conversational preference rows: the exact answer is chosen, the refusal rejected."""
    return [conversational(r["prompt"], r["y_ws"], r["y_l"]) for r in make_preference_rows(n, seed=seed)]


# Responses that start or end with whitespace, where a byte-level BPE could split the prompt/completion
# boundary differently when it tokenises the two texts together.
EDGE_ROWS = [
    conversational(p, c, r)
    for p, c, r in [
        ("Say hi", " hi", "  hi there"),
        ("Two lines", "a\nb", "\nlead"),
        ("Trailing", "end ", "end\n"),
        ("Tabs", "\tx", "x\t\ty"),
    ]
]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _trainer(name: str, policy, reference, rows: list[dict], max_length: int | None, tmp_path) -> DPOTrainer:
    tokenizer = AutoTokenizer.from_pretrained(toy_model_path(name))
    return dpo_trainer(policy, reference, rows, tokenizer, str(tmp_path), beta=BETA, batch_size=len(rows),
                       max_length=max_length)


def _models(name: str):
    """(reference, policy): the toy model and a copy with seeded Gaussian noise on every weight."""
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_pretrained(toy_model_path(name), dtype=torch.float32).eval()
    return reference, perturbed(reference, NOISE, seed=1234)


def _run_trl(name: str, reference, policy, rows, max_length, tmp_path) -> dict:
    """TRL's batch, per-sequence log-probs, loss, metrics and policy gradients on its first train batch."""
    trainer = _trainer(name, policy, reference, rows, max_length, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    captured: dict[str, torch.Tensor] = {}

    def hook(key):
        def fn(_module, _args, output):
            captured[key] = output.log_probs.detach().sum(dim=1)  # TRL sums its per-token log-probs the same way
        return fn

    handles = [
        trainer.model.register_forward_hook(hook("policy")),
        trainer.ref_model.register_forward_hook(hook("reference")),
    ]
    try:
        trainer.model.train()  # as in a training step; dropout is disabled by DPOConfig
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    n = batch["input_ids"].shape[0] // 2
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return {
        "trainer": trainer,
        "batch": batch,
        "n_examples": n,
        # [chosen..., rejected...] -> (B, 2) columns (chosen, rejected)
        "policy": captured["policy"].view(2, n).T,
        "reference": captured["reference"].view(2, n).T,
        "loss": loss.detach(),
        "metrics": metrics,
        "grads": {k: p.grad.detach().clone() for k, p in trainer.model.named_parameters()},
    }


def _project_batch(name: str, rows, max_length: int) -> tuple[dict, PackedBatch, list[int]]:
    """This project's batch of ``rows`` padded (to compare with TRL's tensors) and in the layout training uses
    (prefix-shared, packed), and the indices of the rows it kept."""
    tokenizer = AutoTokenizer.from_pretrained(toy_model_path(name))
    encoded, kept = encode_rows(tokenizer, rows, max_length)
    return collate(encoded, _pad_id(tokenizer)), pack(encoded), kept


def _run_project(name: str, reference, policy, rows, max_length: int) -> dict:
    batch, packed, kept = _project_batch(name, rows, max_length)
    policy_lm = SequenceLogprobs(policy)
    policy_lm.train()
    policy_lm.zero_grad()
    logps, n_tokens = policy_lm(packed)
    with torch.no_grad():
        ref_logps, _ = SequenceLogprobs(reference).eval()(packed)
    shape = (-1, 2)
    out = compute_loss(
        LossConfig(objective="dpo", beta=BETA),
        PreferenceLogps(logps.view(shape), ref_logps.view(shape), n_tokens.view(shape).float()),
        step=0, total_steps=1,
    )
    loss = out.losses.mean()
    loss.backward()
    return {
        "batch": batch,
        "kept": kept,
        "policy": logps.detach().view(shape),
        "reference": ref_logps.view(shape),
        "loss": loss.detach(),
        "metrics": {k: v.item() for k, v in out.metrics.items()},
        "grads": {k: p.grad.detach().clone() for k, p in policy.named_parameters()},
    }


def _example_major(trl_tensor: torch.Tensor) -> torch.Tensor:
    """TRL's ``[chosen..., rejected...]`` rows reordered to this project's ``[c0, r0, c1, r1, ...]``."""
    n = trl_tensor.shape[0] // 2
    return torch.stack([trl_tensor[:n], trl_tensor[n:]], dim=1).reshape(trl_tensor.shape)


def _compare(name: str, rows, max_length: int | None, tmp_path) -> tuple[dict, dict]:
    reference, policy = _models(name)
    # Separate copies for each side: TRL patches its models' forward and keeps their gradients.
    ours = _run_project(name, copy.deepcopy(reference), copy.deepcopy(policy), rows, max_length or NO_LIMIT)
    trl = _run_trl(name, reference, policy, rows, max_length, tmp_path)

    # The same examples survive truncation, with the same token ids and the same scored positions.
    assert trl["n_examples"] == len(ours["kept"])
    assert len(trl["trainer"].train_dataset) == len(ours["kept"])
    trl_ids = _example_major(trl["batch"]["input_ids"])
    trl_attention = _example_major(trl["batch"]["attention_mask"])
    trl_labels = _example_major(trl["batch"]["input_ids"].masked_fill(trl["batch"]["completion_mask"] == 0, -100))
    assert torch.equal(trl_attention, ours["batch"]["attention_mask"])
    assert torch.equal(trl_labels, ours["batch"]["labels"])
    assert torch.equal(trl_ids, ours["batch"]["input_ids"])  # the same padding value on both sides

    torch.testing.assert_close(ours["reference"], trl["reference"], rtol=0, atol=LOGP_ATOL)
    torch.testing.assert_close(ours["policy"], trl["policy"], rtol=0, atol=LOGP_ATOL)
    assert abs(trl["loss"].item() - math.log(2)) > 1e-3, "policy and reference too close: the test would be trivial"
    torch.testing.assert_close(ours["loss"], trl["loss"], rtol=0, atol=LOSS_ATOL)
    for key in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies"):
        assert ours["metrics"][key] == pytest.approx(trl["metrics"][key], abs=LOGP_ATOL), key

    # The gradient of the loss on every policy weight.
    assert ours["grads"].keys() == trl["grads"].keys()
    for key, grad in trl["grads"].items():
        torch.testing.assert_close(ours["grads"][key], grad, rtol=1e-3, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    return ours, trl


@pytest.fixture(autouse=True)
def _deterministic():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_dpo_parity(name, tmp_path):
    """Per-sequence policy and reference log-probs, DPO loss, metrics and gradients equal TRL's."""
    _compare(name, _rows(), max_length=None, tmp_path=tmp_path)


def test_truncation_parity(tmp_path):
    """``max_prompt_length == max_length``: completions cut from the right and long prompts dropped, as in TRL."""
    rows = _rows(8, seed=5)
    tokenizer = AutoTokenizer.from_pretrained(toy_model_path("qwen2"))
    prompt_lengths = [
        len(tokenizer.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)
            ["input_ids"])
        for r in rows
    ]
    max_length = sorted(prompt_lengths)[len(rows) // 2] + 2  # cuts the completions, drops the longest prompts
    assert max(prompt_lengths) >= max_length > min(prompt_lengths)
    ours, _ = _compare("qwen2", rows, max_length=max_length, tmp_path=tmp_path)
    assert 0 < len(ours["kept"]) < len(rows)
    assert ours["batch"]["attention_mask"].sum(dim=1).max().item() == max_length


def test_logps_on_trls_own_tokens(tmp_path):
    """Whatever the tokenisation, this project's kernel scores TRL's ``input_ids``/``completion_mask`` as TRL does."""
    rows = _rows() + EDGE_ROWS
    reference, policy = _models("llama")
    ours_lm = copy.deepcopy(policy)
    trl = _run_trl("llama", reference, policy, rows, None, tmp_path)
    batch = trl["batch"]
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX)
    with torch.no_grad():
        logps, n_tokens = SequenceLogprobs(ours_lm).eval()(
            {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels})
    n = trl["n_examples"]
    torch.testing.assert_close(logps.view(2, n).T, trl["policy"], rtol=0, atol=LOGP_ATOL)
    assert torch.equal(n_tokens, batch["completion_mask"][:, 1:].sum(dim=1))


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gemma2"])
def test_tokenisations_agree(name, tmp_path):
    """TRL's prompt/completion token ids equal ``tokenize_example``'s on the toy chat templates, edge cases included."""
    rows = _rows(8, seed=7) + EDGE_ROWS
    tokenizer = AutoTokenizer.from_pretrained(toy_model_path(name))
    lm = AutoModelForCausalLM.from_pretrained(toy_model_path(name), dtype=torch.float32)
    trainer = _trainer(name, lm, copy.deepcopy(lm), rows, None, tmp_path)
    differences = []
    for i, (trl_example, row) in enumerate(zip(trainer.train_dataset, rows, strict=True)):
        responses = [row["chosen"][0]["content"], row["rejected"][0]["content"]]
        enc, reason, stats = tokenize_example(tokenizer, row["prompt"], responses, max_length=NO_LIMIT,
                                              max_prompt_length=NO_LIMIT)
        assert reason is None and stats["template_fallback"] == 0
        for r, key in enumerate(("chosen_ids", "rejected_ids")):
            prompt = trl_example["prompt_ids"]
            completion = trl_example[key]
            ours_completion = enc["input_ids"][r][len(enc["input_ids"][r]) - enc["num_response_tokens"][r]:]
            trl_labels = [IGNORE_INDEX] * len(prompt) + completion
            if prompt + completion != enc["input_ids"][r] or trl_labels != enc["labels"][r]:
                differences.append(
                    f"row {i} {key}: TRL {tokenizer.convert_ids_to_tokens(prompt[-3:])} | "
                    f"{tokenizer.convert_ids_to_tokens(completion)}; ours "
                    f"{tokenizer.convert_ids_to_tokens(ours_completion)}"
                )
    assert not differences, "\n".join(differences)

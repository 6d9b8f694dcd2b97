"""Prefix-shared packing: the layout, the mask, and per-sequence log-probs and gradients equal to the padded,
unshared path for every toy architecture (float64, CPU)."""

from __future__ import annotations

import random

import pytest
import torch

from wrpo_ray.kernels import IGNORE_INDEX
from wrpo_ray.train.batching import collate
from wrpo_ray.train.packing import allowed, attention_masks, pack, shared_prefix_length


def _example(rng: random.Random, vocab: int, prompt_len: int, response_lens: list[int], shared: int = 0,
             label_prompt: bool = False) -> dict:
    prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
    common = [rng.randrange(3, vocab) for _ in range(shared)]  # responses that start alike
    responses = [common + [rng.randrange(3, vocab) for _ in range(n - shared)] for n in response_lens]
    return {
        "input_ids": [prompt + r for r in responses],
        "labels": [(prompt if label_prompt else [IGNORE_INDEX] * prompt_len) + r for r in responses],
        "num_response_tokens": [len(r) for r in responses],
    }


def test_layout_shares_the_prefix_once_and_restarts_positions():
    ex = {"input_ids": [[5, 6, 7, 8], [5, 6, 9]], "labels": [[-100, -100, 7, 8], [-100, -100, 9]],
          "num_response_tokens": [2, 1]}
    b = pack([ex, ex], row_tokens=10)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2, 3, 2]]
    assert b.segment.tolist() == [[0, 0, 1, 1, 2, 0, 0, 1, 1, 2]]
    assert b.document.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]
    # token 7 and token 9 are both predicted from the prefix's last position (index 1), 8 from 7's
    assert b.predictors.tolist() == [1, 2, 1, 6, 7, 6]
    assert b.targets.tolist() == [7, 8, 9, 7, 8, 9]
    assert b.seq_ids.tolist() == [0, 0, 1, 2, 2, 3]
    assert b.num_seqs == 4


def test_rows_hold_whole_examples_longest_first_padded_at_the_end():
    def ex(prompt, *responses):
        return {"input_ids": [prompt + r for r in responses],
                "labels": [[-100] * len(prompt) + r for r in responses],
                "num_response_tokens": [len(r) for r in responses]}

    examples = [ex([1], [2], [3]), ex([4, 4, 4, 4], [5, 5], [6]), ex([7, 7], [8], [9])]  # runs of 3, 7, 4
    b = pack(examples, pad_id=0)  # rows of up to 7 tokens: [ex1], [ex2, ex0]
    assert b.input_ids.tolist() == [[4, 4, 4, 4, 5, 5, 6], [7, 7, 8, 9, 1, 2, 3]]
    assert b.document.tolist() == [[1] * 7, [2, 2, 2, 2, 0, 0, 0]]
    b = pack(examples[:2] + [ex([7], [8], [9])], pad_id=0)  # runs of 3, 7, 3: [ex1], [ex0, ex2, pad]
    assert b.input_ids.tolist() == [[4, 4, 4, 4, 5, 5, 6], [1, 2, 3, 7, 8, 9, 0]]
    assert b.document[1].tolist() == [0, 0, 0, 2, 2, 2, -1]
    assert b.seq_ids.tolist() == [2, 2, 3, 0, 1, 4, 5]  # example-major, whatever the row
    assert b.tokens == 14


def test_mask_sees_prefix_and_own_response_only():
    ex = {"input_ids": [[1, 2, 3], [1, 2, 4, 5]], "labels": [[-100, -100, 3], [-100, -100, 4, 5]],
          "num_response_tokens": [1, 2]}
    ok = allowed(pack([ex, ex], row_tokens=10))[0]
    # first example: prefix 0,1; response 1: 2; response 2: 3,4
    assert ok[2, :5].tolist() == [True, True, True, False, False]
    assert ok[4, :5].tolist() == [True, True, False, True, True]
    assert not ok[5:, :5].any() and not ok[:5, 5:].any()  # examples never see each other
    window = allowed(pack([ex]), sliding_window=2)[0]
    assert window[4].tolist() == [False, False, False, True, True]  # position 3 sees positions 2 and 3


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 8, 9]]) == 3
    assert shared_prefix_length([[1], [2]]) == 0


def test_pack_refuses_mixed_response_counts():
    ex2 = {"input_ids": [[1, 2], [1, 3]], "labels": [[-100, 2], [-100, 3]], "num_response_tokens": [1, 1]}
    ex1 = {"input_ids": [[1, 2]], "labels": [[-100, 2]], "num_response_tokens": [1]}
    with pytest.raises(ValueError, match="different numbers of responses"):
        pack([ex2, ex1])


ARCHITECTURES = ["llama", "qwen2", "mistral", "gemma2"]


def _model(arch: str, sliding_window: int | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    from wrpo_ray.toy.build import toy_model_path

    config = AutoConfig.from_pretrained(toy_model_path(arch))
    if sliding_window is not None:
        config.sliding_window = sliding_window
        if arch == "qwen2":
            config.use_sliding_window = True
            config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float64)


def _examples(vocab: int, num_responses: int = 3, label_prompt: bool = False) -> list[dict]:
    rng = random.Random(1)
    shapes = [(9, [4, 7, 2], 0), (3, [5, 5, 6], 2), (12, [1, 8, 3], 0), (6, [6, 2, 6], 1)]
    return [_example(rng, vocab, p, lens[:num_responses], min(shared, *lens[:num_responses]), label_prompt)
            for p, lens, shared in shapes]


def _both_paths(model, examples, row_tokens=None, device="cpu"):
    from wrpo_ray.train.policy import SequenceLogprobs

    policy = SequenceLogprobs(model).to(device)
    padded = {k: v.to(device) for k, v in collate(examples, pad_token_id=0).items()}
    unshared, unshared_n = policy(padded)
    packed, packed_n = policy(pack(examples, row_tokens=row_tokens).to(device))
    return policy, unshared, packed, unshared_n, packed_n


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh)")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("row_tokens", [None, 1000], ids=["rows-by-longest", "one-row"])
@pytest.mark.parametrize("sliding_window", [None, 6], ids=["full", "window6"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_logprobs_and_gradients_equal_unshared(arch, sliding_window, row_tokens, device):
    if sliding_window is not None and arch == "llama":
        pytest.skip("Llama has no sliding window")
    model = _model(arch, sliding_window)
    examples = _examples(model.config.vocab_size)
    policy, unshared, packed, unshared_n, packed_n = _both_paths(model, examples, row_tokens, device)
    assert packed_n.tolist() == unshared_n.tolist()
    torch.testing.assert_close(packed, unshared, rtol=1e-10, atol=1e-10)

    weights = torch.randn(unshared.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    grads = []
    for values in (unshared, packed):
        policy.zero_grad()
        (values * weights).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    # transformers' RMSNorm computes in float32 even for float64 inputs: a shared prefix token's gradient is
    # rounded once after the responses' contributions are summed, the unshared copies' each before, so the
    # gradients agree to float32's precision (measured: 1e-8 to 1e-7 relative), not float64's
    for name in grads[0]:
        error = (grads[1][name] - grads[0][name]).norm() / grads[0][name].norm().clamp_min(1e-30)
        assert error < 1e-5, (name, error.item())


def test_one_response_with_labelled_prompt_equals_unshared():
    """Target-SFT's shape: one sequence per example, the prompt scored too."""
    model = _model("llama")
    examples = _examples(model.config.vocab_size, num_responses=1, label_prompt=True)
    _, unshared, packed, unshared_n, packed_n = _both_paths(model, examples)
    assert packed_n.tolist() == unshared_n.tolist()
    torch.testing.assert_close(packed, unshared, rtol=1e-10, atol=1e-10)


def test_gemma2_gets_one_mask_per_layer_type():
    model = _model("gemma2")
    masks = attention_masks(model.config, pack(_examples(model.config.vocab_size)), torch.float32)
    assert set(masks) == {"sliding_attention", "full_attention"}

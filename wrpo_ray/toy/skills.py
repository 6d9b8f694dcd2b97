"""Skilled toy models: a tiny model fine-tuned on some of the toy task's skills when it is built.

Fusion only has something to transfer when the sources are good at different things and the target is
weaker, so the embedded demo's sources each learn a few skills, and its target learns all of them briefly.
Training is a plain single-process PyTorch loop, part of building the model, and deterministic in the spec.
Answers are formatted with each model's own chat template and end with its end-of-turn token, so that
generation (transformers or vLLM) stops after the answer.

`python -m wrpo_ray.toy.skills` builds every skilled model and prints its accuracy per skill.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wrpo_ray.toy.registry import TOY_MODELS, ToyModelSpec
from wrpo_ray.toy.task import SKILLS, make_examples

EVAL_SEED = 4242
"""Seed of the held-out prompts; training prompts use the spec's seed."""
NUM_THREADS = 1
MAX_LENGTH = 64
WARMUP_FRACTION = 0.05


def skilled_models() -> dict[str, ToyModelSpec]:
    return {name: spec for name, spec in TOY_MODELS.items() if spec.train_steps > 0}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Fix the intra-op thread count (results depend on it), restoring the caller's afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def encode_rows(tokenizer: Any, rows: list[dict[str, Any]]) -> list[dict[str, list]]:
    """Prompt tokens (generation prompt included) then answer tokens with the end-of-turn, labelled on the answer."""
    from wrpo_ray.train.batching import tokenize_example

    encoded = []
    for row in rows:
        enc, reason, _ = tokenize_example(
            tokenizer, chat(row["prompt"]), [row["answer"]], max_length=MAX_LENGTH, max_prompt_length=MAX_LENGTH // 2
        )
        if enc is None:
            raise ValueError(f"cannot encode toy example {row['prompt_id']}: {reason}")
        encoded.append(enc)
    return encoded


def lr_factor(step: int, steps: int) -> float:
    """Linear warm-up, then linear decay to zero."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def sft(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
) -> list[float]:
    """Train `model` in place on consecutive batches of `rows` (cycled); the loss of every step."""
    import torch

    from wrpo_ray.train.batching import collate, padding_id

    encoded = encode_rows(tokenizer, rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps))
    model.train()
    losses = []
    for step in range(steps):
        start = (step * batch_size) % len(encoded)
        batch = collate([encoded[(start + i) % len(encoded)] for i in range(batch_size)], padding_id(tokenizer))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    model.eval()
    return losses


def training_rows(spec: ToyModelSpec) -> list[dict[str, Any]]:
    """Fresh prompts for every step, cycling through the spec's skills."""
    return make_examples(spec.train_steps * spec.batch_size, seed=spec.seed, skills=list(spec.skills))


def saved_tokenizer(tokenizer: Any, out_dir: str | Path) -> Any:
    """Save `tokenizer` to `out_dir` and load it back the way every consumer of the model will.

    `AutoTokenizer` can load a saved tokenizer as a different class than the one built in memory (a Qwen2
    model's comes back as `Qwen2Tokenizer`, which splits digits and spaces apart), so the model is trained
    on the tokens that transformers and vLLM will give it.
    """
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def train_skilled(spec: ToyModelSpec, out_dir: str | Path) -> list[float]:
    """Build `spec`'s random model, fine-tune it on its skills, save it in HF format; the loss of every step."""
    from wrpo_ray.toy.build import init_model, save_model

    unknown = sorted(set(spec.skills) - set(SKILLS))
    if unknown or not spec.skills:
        raise ValueError(f"a trained toy model needs skills from {sorted(SKILLS)}, got {spec.skills}")
    with torch_threads(NUM_THREADS):
        model, tokenizer = init_model(spec)
        model.config.save_pretrained(out_dir)
        tokenizer = saved_tokenizer(tokenizer, out_dir)
        losses = sft(
            model, tokenizer, training_rows(spec), steps=spec.train_steps, batch_size=spec.batch_size, lr=spec.lr
        )
    save_model(model, tokenizer, out_dir)
    return losses


def generate_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
    """Greedy answers, decoded without special tokens, to prompts rendered with the model's chat template."""
    import torch

    texts = [tokenizer.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    from wrpo_ray.train.batching import pad_sequences, padding_id

    pad = padding_id(tokenizer)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    input_ids, attention_mask = pad_sequences(encoded, pad, side="left")
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    return tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)


def skill_accuracy(model: Any, tokenizer: Any, n: int = 50, seed: int = EVAL_SEED) -> dict[str, float]:
    """Greedy exact-match accuracy on `n` held-out prompts of every skill."""
    accuracy = {}
    for skill in sorted(SKILLS):
        rows = make_examples(n, seed=seed, skills=[skill])
        answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows])
        accuracy[skill] = sum(a.strip() == r["answer"] for a, r in zip(answers, rows, strict=True)) / n
    return accuracy


def _report(names: list[str], root: str | None, n: int) -> None:
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wrpo_ray.toy.build import toy_model_path

    tmp = Path(tempfile.mkdtemp(prefix="wrpo-toy-skills-")) if root is None else Path(root)
    print("| model | arch | trained on | steps | build s | " + " | ".join(sorted(SKILLS)) + " |")
    print("|---|---|---|---|---|" + "---|" * len(SKILLS))
    total = 0.0
    try:
        for name in names:
            spec = TOY_MODELS[name]
            t0 = time.perf_counter()
            path = toy_model_path(name, tmp)
            seconds = time.perf_counter() - t0
            total += seconds
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
            with torch_threads(NUM_THREADS):
                acc = skill_accuracy(model, tokenizer, n=n)
            cells = " | ".join(f"{acc[s]:.0%}" for s in sorted(SKILLS))
            print(f"| {name} | {spec.arch} | {', '.join(spec.skills)} | {spec.train_steps} | {seconds:.0f} | {cells} |",
                  flush=True)
        print(f"\ntotal build time {total:.0f} s")
    finally:
        if root is None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the skilled toy models and report their accuracy per skill.")
    parser.add_argument("names", nargs="*", help="registry names (default: every skilled model)")
    parser.add_argument("--root", help="build cache to use (default: a fresh temporary one, so builds are timed)")
    parser.add_argument("-n", type=int, default=50, help="held-out prompts per skill")
    args = parser.parse_args(argv)
    _report(args.names or list(skilled_models()), args.root, args.n)


if __name__ == "__main__":
    main()

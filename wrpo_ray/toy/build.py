"""Deterministic builders of the tiny models in HF format (safetensors, tokenizer, chat template).

Each model gets its own byte-level BPE tokenizer, trained here with `tokenizers` on the toy corpus with
its own vocabulary size and special tokens, so no two models share a tokenizer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wrpo_ray.toy.registry import TOY_MODELS, ToyModelSpec
from wrpo_ray.toy.task import corpus

DEFAULT_TOY_DIR = Path(os.environ.get("WRPO_RAY_TOY_DIR", Path.home() / ".cache" / "wrpo-ray" / "toy"))
_BUILD_VERSION = "2"
"""Version of the untrained models' recipe (tokenizer conventions, config): part of every cache key."""
_TRAIN_VERSION = "2"
"""Version of the fine-tuning of the skilled models (`wrpo_ray.toy.skills`), part of their cache key."""


def build_tokenizer(spec: ToyModelSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    style = spec.style
    specials = list(dict.fromkeys(t for t in [style.bos, style.eos, style.pad, *style.extra] if t is not None))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=spec.seed), trainer=trainer)
    if style.add_bos_on_encode:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{style.bos} $A", pair=f"{style.bos} $A {style.bos} $B",
            special_tokens=[(style.bos, tok.token_to_id(style.bos))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=style.bos,
        eos_token=style.eos,
        pad_token=style.pad,
        additional_special_tokens=list(style.extra),
        chat_template=style.template,
        truncation_side="left",
    )


def _model_config(spec: ToyModelSpec, tokenizer):
    import transformers

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **spec.extra_config,
    )
    if spec.arch == "llama":
        return transformers.LlamaConfig(**common)
    if spec.arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if spec.arch == "mistral":
        return transformers.MistralConfig(sliding_window=None, **common)
    if spec.arch == "gemma2":
        common["tie_word_embeddings"] = True
        return transformers.Gemma2Config(query_pre_attn_scalar=64, sliding_window=512, **common)
    raise ValueError(f"unknown toy architecture {spec.arch!r}")


def init_model(spec: ToyModelSpec):
    """The tokenizer and the seeded random model of `spec`, in memory: `(model, tokenizer)`."""
    import torch
    import transformers

    tokenizer = build_tokenizer(spec)
    config = _model_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    if spec.reward_head:
        config.num_labels = 1
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.to(torch.float32).eval()
    if not spec.reward_head:
        model.generation_config = transformers.GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_model(spec: ToyModelSpec, out_dir: str | Path) -> Path:
    """Build one tiny model and save it to `out_dir`: seeded random weights, or trained on its skills."""
    if spec.train_steps > 0:
        from wrpo_ray.toy.skills import train_skilled

        train_skilled(spec, out_dir)
        return Path(out_dir)
    return save_model(*init_model(spec), out_dir)


def model_dir_name(name: str, spec: ToyModelSpec) -> str:
    """Cache directory name with a digest of the spec and the build (and training) versions: any change rebuilds."""
    key = f"{_BUILD_VERSION}:{spec!r}" if spec.train_steps <= 0 else f"{_BUILD_VERSION}:{_TRAIN_VERSION}:{spec!r}"
    return f"{name}-v{_BUILD_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


@contextlib.contextmanager
def _build_lock(root: Path, name: str) -> Iterator[None]:
    """One builder per model at a time, so that concurrent first uses train it once."""
    with open(root / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def toy_model_path(name: str, root: str | Path | None = None) -> Path:
    """Directory of toy model `name`, building it (once, atomically) if it is not there yet."""
    spec = TOY_MODELS[name]
    root = Path(root) if root else DEFAULT_TOY_DIR
    target = root / model_dir_name(name, spec)
    marker = target / "wrpo_toy.json"
    if marker.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root, name):
        if marker.is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build_model(spec, tmp)
            info = {"name": name, "arch": spec.arch, "seed": spec.seed}
            if spec.train_steps > 0:
                info.update(skills=list(spec.skills), train_steps=spec.train_steps)
            (tmp / "wrpo_toy.json").write_text(json.dumps(info))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_all(root: str | Path | None = None) -> dict[str, Path]:
    return {name: toy_model_path(name, root) for name in TOY_MODELS}


if __name__ == "__main__":
    for n, p in build_all().items():
        print(f"{n}: {p}")

"""Specs of the tiny models the embedded default builds: different architectures, tokenizers, vocabularies.

Kept free of heavy imports so that config validation can check `toy://NAME` without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatStyle:
    """Special tokens, Jinja chat template and tokenizer quirks of one real model family.

    The tiny models copy the conventions that trip up real runs: no pad token (Llama-3, Mistral), a
    tokenizer that adds BOS itself while the template also writes it (Llama-3), templates that raise on
    a system turn (Mistral, Gemma-2) or trim message text (Llama-3, Gemma-2).
    """

    bos: str
    eos: str
    pad: str | None
    extra: tuple[str, ...]
    template: str
    add_bos_on_encode: bool = False
    """The tokenizer's post-processor prepends BOS when `add_special_tokens=True` (Llama-3's does)."""


LLAMA_STYLE = ChatStyle(
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    pad=None,
    extra=("<|start_header_id|>", "<|end_header_id|>"),
    template=(
        "{% for m in messages %}{% set content = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
        " + m['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
        "{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    add_bos_on_encode=True,
)
CHATML_STYLE = ChatStyle(
    bos="<|endoftext|>",
    eos="<|im_end|>",
    pad="<|endoftext|>",
    extra=("<|im_start|>",),
    template=(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
)
MISTRAL_STYLE = ChatStyle(
    bos="<s>",
    eos="</s>",
    pad=None,
    extra=("[INST]", "[/INST]"),
    template=(
        "{{ bos_token }}{% for m in messages %}"
        "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
    ),
)
GEMMA_STYLE = ChatStyle(
    bos="<bos>",
    eos="<end_of_turn>",
    pad="<pad>",
    extra=("<start_of_turn>",),
    template=(
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
)
# like a reward model built on Llama-3 (ArmoRM): no pad token, so batched scoring must bring its own
REWARD_STYLE = ChatStyle(
    bos="[BOS]",
    eos="[EOS]",
    pad=None,
    extra=("[USER]", "[ASSISTANT]"),
    template=(
        "{{ bos_token }}{% for m in messages %}{{ '[USER]' if m['role'] == 'user' else '[ASSISTANT]' }}"
        "{{ m['content'] }}{% endfor %}{{ eos_token }}"
    ),
)


@dataclass(frozen=True)
class ToyModelSpec:
    """A tiny HF model. head_dim must stay 64: vLLM's CPU attention rejects smaller heads.

    With `train_steps > 0` the model is fine-tuned on the toy task's `skills` when it is built
    (`wrpo_ray.toy.skills`), with AdamW at peak learning rate `lr` on batches of `batch_size` prompts.
    """

    arch: str
    vocab_size: int
    style: ChatStyle
    seed: int
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 1024
    reward_head: bool = False
    extra_config: dict = field(default_factory=dict)
    skills: tuple[str, ...] = ()
    train_steps: int = 0
    batch_size: int = 16
    lr: float = 1e-3


TOY_MODELS: dict[str, ToyModelSpec] = {
    "llama": ToyModelSpec(arch="llama", vocab_size=512, style=LLAMA_STYLE, seed=11),
    "qwen2": ToyModelSpec(arch="qwen2", vocab_size=768, style=CHATML_STYLE, seed=12, num_kv_heads=1),
    "mistral": ToyModelSpec(arch="mistral", vocab_size=640, style=MISTRAL_STYLE, seed=13),
    "gemma2": ToyModelSpec(arch="gemma2", vocab_size=896, style=GEMMA_STYLE, seed=14,
                           extra_config={"final_logit_softcapping": 30.0}),
    "target": ToyModelSpec(arch="llama", vocab_size=704, style=LLAMA_STYLE, seed=15),
    "reward": ToyModelSpec(arch="llama", vocab_size=448, style=REWARD_STYLE, seed=16, reward_head=True),
    # The embedded demo's models, fine-tuned on the toy task when built: each source is good at different skills,
    # the target is briefly trained on all of them. Vocabularies this small merge little beyond the prompt words,
    # so letters and digits are single tokens, which the character-level skills need.
    "src-llama": ToyModelSpec(
        arch="llama", vocab_size=288, style=LLAMA_STYLE, seed=21, skills=("reverse", "upper"), train_steps=800
    ),
    "src-qwen2": ToyModelSpec(
        arch="qwen2", vocab_size=296, style=CHATML_STYLE, seed=22, skills=("add",), train_steps=1300
    ),
    "src-mistral": ToyModelSpec(
        arch="mistral", vocab_size=280, style=MISTRAL_STYLE, seed=23, skills=("sort",), train_steps=1200
    ),
    "target-weak": ToyModelSpec(
        arch="llama", vocab_size=304, style=LLAMA_STYLE, seed=25, skills=("add", "reverse", "sort", "upper"),
        train_steps=500,
    ),
    # The fusion study's target: like an instruction model the sources beat on part of the distribution, it knows
    # every skill in part (add 22%, reverse 64%, sort 26%, upper 24% greedy) and each source beats it on its own
    # skills. Addition is learned last (its loss plateaus before it drops), so it gets most of the steps.
    "target-partial": ToyModelSpec(
        arch="llama", vocab_size=304, style=LLAMA_STYLE, seed=25,
        skills=("add", "add", "add", "add", "add", "reverse", "sort", "upper"), train_steps=1400,
    ),
}

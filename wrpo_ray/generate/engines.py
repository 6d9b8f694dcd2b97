"""vLLM generation as a Ray Data callable class: one instance per actor, one actor pool per source model.

A class of our own rather than `ray.data.llm.build_processor`: it needs K samples per prompt from one
request (`SamplingParams(n=K)`), each model's own chat template, and per-row errors (a prompt too long for
this model's context) that become quarantine rows instead of failing the batch.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa

from wrpo_ray.data.schemas import GENERATED


def prompt_token_ids(
    tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None = None
) -> tuple[list[int], str | None]:
    """The generation prompt's token ids with the model's chat template, or a per-row error.

    The rendered template already holds every special token it needs (Llama-3's writes
    `<|begin_of_text|>`), so the text is encoded without adding them again. A template that refuses the
    conversation (Mistral's and Gemma-2's raise on a system turn) is this row's error, not the batch's.
    """
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=chat_template
        )
    except TemplateError as e:
        return [], f"chat_template_error: {e}"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def engine_settings(model: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment and `LLM` keyword arguments that decide which processes a vLLM engine starts.

    With `engine_in_actor` (the default) the engine core runs inside the pool's Ray actor and a one-GPU engine
    executes there too (`uni`, ray.data.llm's choice): the actor is the engine's only process, so whatever ends
    the actor (pool teardown, `ray job stop`, a lost driver, a SIGKILL) ends the engine, and nothing holds a
    GPU after it. It also starts in a few seconds instead of spawning and handshaking with two processes.
    With it off, vLLM's own layout (an `EngineCore` process and executor workers) runs as the actor's
    children; Ray's per-worker process groups (`runtime.RAY_NODE_ENV`) end them with the actor.
    Tensor- or pipeline-parallel engines keep vLLM's multiprocessing executor, whose workers exit when the
    process holding their death pipe (the actor) ends.
    """
    engine_kwargs = dict(model.get("engine_kwargs", {}))
    in_actor = model.get("engine_in_actor", True)
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if in_actor else "1"}
    parallel = engine_kwargs.get("tensor_parallel_size", 1) * engine_kwargs.get("pipeline_parallel_size", 1)
    if in_actor and parallel == 1:
        engine_kwargs.setdefault("distributed_executor_backend", "uni")
    return env, engine_kwargs


class VLLMGenerator:
    """Generates `sampling.n` responses per prompt with one vLLM engine."""

    def __init__(self, model: dict[str, Any], local_path: str, seed: int) -> None:
        env, engine_kwargs = engine_settings(model)
        os.environ.update(env)  # this actor's own process: vLLM reads it when the engine starts
        from vllm import LLM, SamplingParams

        self.name = model["name"]
        self.llm = LLM(
            model=local_path,
            tokenizer=local_path,
            dtype=model.get("dtype", "auto"),
            seed=seed,
            trust_remote_code=model.get("trust_remote_code", False),
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template = model.get("chat_template")
        s = model["sampling"]
        self.params = SamplingParams(
            n=s["n"], temperature=s["temperature"], top_p=s["top_p"], max_tokens=s["max_tokens"]
        )
        self.max_prompt_tokens = self.llm.llm_engine.model_config.max_model_len - s["max_tokens"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        from vllm.inputs import TokensPrompt

        rows = batch.to_pylist()
        out: list[dict[str, Any]] = []
        requests, owners = [], []
        for row in rows:
            ids, error = prompt_token_ids(self.tokenizer, row["messages"], self.chat_template)
            if error is not None:
                out.append(self._row(row, 0, None, 0, 0, None, error, 0.0))
                continue
            if len(ids) > self.max_prompt_tokens:
                out.append(self._row(row, 0, None, 0, len(ids), None,
                                     f"prompt_too_long_for_model: {len(ids)} tokens > {self.max_prompt_tokens}", 0.0))
                continue
            requests.append(TokensPrompt(prompt_token_ids=ids))
            owners.append(row)
        t0 = time.perf_counter()
        results = self.llm.generate(requests, self.params, use_tqdm=False) if requests else []
        per_sample = (time.perf_counter() - t0) / max(sum(len(r.outputs) for r in results), 1)
        for row, res in zip(owners, results, strict=True):
            for c in res.outputs:
                out.append(self._row(row, c.index, c.text, len(c.token_ids), len(res.prompt_token_ids),
                                     c.finish_reason, None, per_sample))
        return pa.Table.from_pylist(out, schema=GENERATED)

    def _row(self, row, idx, text, n_tok, p_tok, finish, error, seconds) -> dict[str, Any]:
        return {
            "prompt_id": row["prompt_id"], "prompt": row["prompt"], "messages": row["messages"],
            "metadata": row["metadata"], "model": self.name, "sample_idx": idx, "response": text,
            "num_tokens": n_tok, "prompt_tokens": p_tok, "finish_reason": finish, "gen_seconds": seconds,
            "error": error,
        }

"""This project's DPO training step against TRL 1.16's ``DPOTrainer``: tokens/s and peak memory per optimizer step,
on the same tiny model and the same data, on CPU.

Both sides train a copy of the same policy (the reference plus small seeded noise, so that the loss is not
``log 2``) on the same conversational (prompt, chosen, rejected) rows in the same order: micro-batches of the same
size, float32, one micro-batch per optimizer step (no gradient accumulation), AdamW at the same learning rate (no
weight decay, constant schedule), gradients clipped to norm 1.0.

- TRL: ``DPOTrainer.train()`` (sigmoid loss, its fused LM head, sequential batches), built as the parity tests
  build it (``wrpo_ray.toy.trl_peer``); a callback times and profiles its steps. Nothing is logged or saved
  during the steps.
- this project: ``packing.make_batch`` -> ``SequenceLogprobs`` -> ``losses.compute_loss`` (DPO) -> backward ->
  clip -> ``AdamW.step``, with prefix-shared packing (``shared_prefix``, the default) and with padded batches
  (``padded``), each on its own copy of the policy. No Ray, no DeepSpeed (as in ``bench_packing.py``).

Model and data: the toy target (its saved weights; ``--arch``), or with ``--hidden``/``--layers``/``--vocab`` a
fresh random model of its architecture; rows of random words whose prompt and responses are about
``--prompt-tokens`` and ``--response-tokens`` long (128:128 by default, ``bench_packing.py``'s UltraFeedback-like
shape: a prompt about as long as a response), in the toy's chat template.

Reference log-probs: with ``--reference precomputed`` (the default) both sides compute them before training, TRL
with ``precompute_ref_log_probs=True``, this project as its ``ReferenceLogps`` stage does, and no timed step does
reference work. ``--reference model`` runs the frozen reference's forward inside every step on both sides.

First, on the first batch and before any step, TRL's ``compute_loss`` and this project's loss (both packings)
must agree to a relative ``--loss-rtol`` (1e-5) in float64, and both must count the same tokens; the script
stops otherwise (see ``parity``: TRL's kernel keeps float32 statistics even in float64, so the bound is about
what a float32 log-prob allows, and a longer sequence or a larger vocabulary moves TRL's loss further).

The steps then run interleaved in one process: after each TRL step (its ``on_step_end``) each of this project's
variants takes the same step on the same batch, so that load from other processes hits all of them alike.

- time: wall time of each optimizer step; the median over ``--steps`` steps that follow ``--warmup`` steps and one
  profiled step. TRL's step runs from the end of one ``on_step_end`` callback to the start of the next: fetching
  and collating the batch, ``training_step`` (loss, its metrics, backward), clipping, the optimizer and scheduler
  steps and the loop's bookkeeping. This project's step builds its batch from the tokenized rows and does the
  rest. "core" leaves out building the batch on both sides (TRL: ``on_step_begin`` to ``on_step_end``).
- tokens: what TRL counts in ``num_tokens``, the non-padding positions of its batch (``attention_mask.sum()``): per
  example prompt + chosen + prompt + rejected, chat template included, the prompt counted once per response. It
  is the same count for every variant (checked against TRL's counter at the end); tokens/s is its mean over the
  timed steps divided by the median step time. "positions" is what the model computes per step, padding included
  (the packed layout holds each prompt once).
- memory: the peak of bytes held by tensors allocated during one optimizer step, relative to its start (gradients
  and activations; weights and optimizer state exist before), from ``torch.profiler``'s allocation and free events
  summed in time order (``bench_logprobs.peak_bytes``'s CPU method), around the step after the warm-up.

One torch thread by default (``--threads``): on two cores shared with other jobs, a second thread that waits for
a busy core made the same steps take 0.6-1.8 s instead of about 70 ms.

Goal: this project at least ``GOAL_SPEEDUP``x TRL's tokens/s at most ``GOAL_MEMORY``x its peak memory.

Examples (the default takes under a minute on 2 busy CPU cores; the wider model about 3.7 s a step per variant)::

    python benchmarks/bench_trl_dpo.py --write
    python benchmarks/bench_trl_dpo.py --hidden 512 --layers 4 --steps 6 --write \\
        --out benchmarks/results/trl-dpo-cpu-hidden512
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_logprobs import profiled_peak  # noqa: E402
from bench_packing import cost, toy_config  # noqa: E402
from record import PACKAGES, environment, machine_line, write_result  # noqa: E402

BETA = 0.1
NOISE = 0.02
MAX_GRAD_NORM = 1.0
NO_LIMIT = 1 << 20
GOAL_SPEEDUP = 1.5
GOAL_MEMORY = 0.5
TRL = "trl"
PACKINGS = ("shared_prefix", "padded")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ------------------------------------------------------------------------------------------------- data, models
def preference_rows(tokenizer, n: int, prompt_tokens: int, response_tokens: int, seed: int) -> list[dict]:
    """``n`` conversational rows of random lowercase words: each prompt and response about its target length in
    tokens (+-25%, seeded, so padded batches carry the padding real data does)."""
    from wrpo_ray.toy.trl_peer import conversational

    rng = random.Random(seed)
    sizes: dict[str, int] = {}

    def size(piece: str) -> int:
        if piece not in sizes:
            sizes[piece] = len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        return sizes[piece]

    def text(target: int) -> str:
        words: list[str] = []
        count = 0
        while count < target:
            word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))
            count += size(" " + word if words else word)
            words.append(word)
        return " ".join(words)

    def jitter(length: int) -> int:
        return max(1, round(length * rng.uniform(0.75, 1.25)))

    return [conversational(text(jitter(prompt_tokens)), text(jitter(response_tokens)), text(jitter(response_tokens)))
            for _ in range(n)]


def reference_model(args: argparse.Namespace, max_tokens: int):
    """The toy model (its saved weights), or with ``--hidden/--layers/--vocab`` a fresh random one of its
    architecture; float32, no KV cache."""
    from transformers import AutoModelForCausalLM

    from wrpo_ray.toy.build import toy_model_path

    torch.manual_seed(0)
    if args.hidden or args.layers or args.vocab:
        config = toy_config(args.arch, args.hidden, args.layers)
        if args.vocab:
            config.vocab_size = args.vocab
        config.max_position_embeddings = max(config.max_position_embeddings, max_tokens)
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        described = "random weights"
    else:
        lm = AutoModelForCausalLM.from_pretrained(toy_model_path(args.arch), dtype=torch.float32)
        described = "the toy's weights"
        if max_tokens > lm.config.max_position_embeddings:
            raise SystemExit(f"sequences of {max_tokens} tokens exceed the toy's {lm.config.max_position_embeddings} "
                             "positions: use shorter --prompt-tokens/--response-tokens, or --hidden/--layers")
    lm.config.use_cache = False
    c = lm.config
    return lm.eval(), (f"{args.arch} config, hidden {c.hidden_size}, {c.num_hidden_layers} layers, vocab "
                       f"{c.vocab_size}, float32, {described}")


def tokens(encoded: list[dict]) -> int:
    """TRL's count: every prompt+response sequence's tokens, no padding."""
    return sum(len(ids) for e in encoded for ids in e["input_ids"])


# ---------------------------------------------------------------------------------------------- this project
class ProjectSide:
    """One of this project's variants: its own policy copy, optimizer and packing."""

    def __init__(self, packing: str, policy_lm, reference, pad_id: int, lr: float, total_steps: int) -> None:
        from wrpo_ray.train.losses import LossConfig
        from wrpo_ray.train.policy import SequenceLogprobs

        self.packing = packing
        self.policy = SequenceLogprobs(policy_lm).train()
        self.reference = reference
        self.pad_id = pad_id
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=lr, weight_decay=0.0)
        self.loss_cfg = LossConfig(objective="dpo", beta=BETA)
        self.total_steps = total_steps

    def loss(self, batch, step: int) -> torch.Tensor:
        from wrpo_ray.train.losses import PreferenceLogps, compute_loss
        from wrpo_ray.train.packing import reference_logps_of

        logps, n_tokens = self.policy(batch)
        ref = reference_logps_of(batch)
        if ref is None:
            with torch.no_grad():
                ref, _ = self.reference(batch)
        shape = (-1, 2)
        out = compute_loss(self.loss_cfg, PreferenceLogps(logps.view(shape), ref.view(shape).to(logps.dtype),
                                                          n_tokens.view(shape).float()),
                           step=step, total_steps=self.total_steps)
        return out.losses.mean()

    def step(self, rows: list[dict], step: int) -> float:
        """One optimizer step on ``rows``; returns the seconds spent building the batch."""
        from wrpo_ray.train.packing import make_batch

        start = time.perf_counter()
        batch = make_batch(rows, self.packing, self.pad_id, "cpu")
        built = time.perf_counter() - start
        self.loss(batch, step).backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return built


def precompute_reference(reference, encoded: list[dict], batch_size: int, pad_id: int) -> None:
    """``ref_logps`` on every encoded row, as the ``ReferenceLogps`` stage writes them (shared-prefix batches)."""
    from wrpo_ray.train.packing import make_batch

    for start in range(0, len(encoded), batch_size):
        rows = encoded[start:start + batch_size]
        with torch.inference_mode():
            logps, _ = reference(make_batch(rows, "shared_prefix", pad_id, "cpu"))
        for row, values in zip(rows, logps.view(len(rows), -1).double().tolist(), strict=True):
            row["ref_logps"] = values


# ------------------------------------------------------------------------------------------------- measuring
class StepMemory:
    """``bench_logprobs.peak_bytes``'s CPU method, opened and closed around a span of code rather than a call:
    the peak of tensor bytes allocated while it records, relative to its start."""

    def __init__(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.prof.start()

    def stop(self) -> int:
        self.prof.stop()
        return profiled_peak(self.prof)


class Interleaved:
    """Called by the TRL trainer's callback after each of its steps: records TRL's step, then runs the same step
    for each of this project's variants."""

    def __init__(self, sides: list[ProjectSide], batches: list[list[dict]], warmup: int) -> None:
        self.sides = sides
        self.batches = batches
        self.profiled = warmup + 1
        self.names = [TRL] + [s.packing for s in sides]
        self.seconds: dict[str, list[float]] = {k: [] for k in self.names}
        self.core: dict[str, list[float]] = {k: [] for k in self.names}
        self.peak: dict[str, int] = {}
        self.timed_steps: list[int] = []
        self.memory: StepMemory | None = None

    def after_trl_step(self, step: int, seconds: float, core: float) -> None:
        if step == self.profiled:
            self.peak[TRL] = self.memory.stop()
        elif step > self.profiled:
            self.timed_steps.append(step)
            self.seconds[TRL].append(seconds)
            self.core[TRL].append(core)
        rows = self.batches[step - 1]
        for side in self.sides:
            side.policy.zero_grad(set_to_none=True)
            if step == self.profiled:
                memory = StepMemory()
                side.step(rows, step - 1)
                self.peak[side.packing] = memory.stop()
                continue
            start = time.perf_counter()
            built = side.step(rows, step - 1)
            wall = time.perf_counter() - start
            if step > self.profiled:
                self.seconds[side.packing].append(wall)
                self.core[side.packing].append(wall - built)
        if step + 1 == self.profiled:
            self.memory = StepMemory()


def trl_callback(run: Interleaved):
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.resume = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            run.after_trl_step(state.global_step, now - self.resume, now - self.begin)
            self.resume = time.perf_counter()

    return Timer()


def _losses(trainer, sides: list[ProjectSide], first: list[dict]) -> tuple[dict, dict]:
    """TRL's batch and loss, and this project's loss with each packing, on the first batch, without a step."""
    from wrpo_ray.train.packing import make_batch

    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    with torch.no_grad():
        losses = {TRL: trainer.compute_loss(trainer.model, batch).item()}
        for side in sides:
            losses[side.packing] = side.loss(make_batch(first, side.packing, side.pad_id, "cpu"), 0).item()
    trainer._metrics["train"].clear()  # not a training step
    trainer._total_train_tokens = 0
    return batch, losses


def _relative(losses: dict) -> dict:
    return {k: abs(v - losses[TRL]) / abs(losses[TRL]) for k, v in losses.items() if k != TRL}


def parity(trainer, sides: list[ProjectSide], first_rows: list[dict], first: list[dict], tokenizer,
           reference_lm, policy_lm, lr: float, rtol: float) -> dict:
    """The first batch, before any step: both sides must compute the same loss and count the same tokens.

    The loss is compared in float64 (copies of both models; reference forward inside the step on both sides), to
    a relative ``rtol``: in float32 a DPO margin is a difference of sequence log-probs in the hundreds, and
    rounding alone moves the loss by about 1e-5 (the float32 losses of the timed models are recorded too). TRL's
    fused LM head keeps its softmax statistics and per-token log-probs in float32 whatever the model's dtype, so
    its float64 loss still carries float32 rounding. TRL's precomputed reference log-probs (stored as float32)
    are compared with this project's relative to their size.
    """
    from wrpo_ray.toy.trl_peer import dpo_trainer
    from wrpo_ray.train.policy import SequenceLogprobs

    batch, losses32 = _losses(trainer, sides, first)
    out = {"float32": {"losses": losses32, "rel_diff": _relative(losses32)}, "tokens": tokens(first),
           "trl_tokens": int(batch["attention_mask"].sum()), "trl_positions": int(batch["input_ids"].numel()),
           "positions_padded": cost(first, "padded")["positions"]}
    ref64, policy64 = copy.deepcopy(reference_lm).double(), copy.deepcopy(policy_lm).double()
    reference = SequenceLogprobs(copy.deepcopy(ref64)).eval().requires_grad_(False)
    sides64 = [ProjectSide(s.packing, copy.deepcopy(policy64), reference, s.pad_id, lr, 1) for s in sides]
    in_step = [{k: v for k, v in e.items() if k != "ref_logps"} for e in first]
    with tempfile.TemporaryDirectory() as output_dir:
        check = dpo_trainer(policy64, ref64, first_rows, tokenizer, output_dir, beta=BETA, batch_size=len(first),
                            max_length=None, precompute_ref_log_probs=False, disable_tqdm=True)
        _, losses64 = _losses(check, sides64, in_step)
    out["float64"] = {"losses": losses64, "rel_diff": _relative(losses64)}
    failures = [f"{k}: float64 loss {losses64[k]:.10f} against TRL's {losses64[TRL]:.10f} (relative difference "
                f"{d:.2e} > {rtol:g})" for k, d in out["float64"]["rel_diff"].items() if d > rtol]
    if "ref_chosen_logps" in batch:
        ours = torch.tensor([e["ref_logps"] for e in first], dtype=torch.float64)
        theirs = torch.stack([batch["ref_chosen_logps"], batch["ref_rejected_logps"]], dim=1).double()
        out["ref_logps_max_rel_diff"] = ((ours - theirs) / theirs).abs().max().item()
        if out["ref_logps_max_rel_diff"] > rtol:
            failures.append(f"precomputed reference log-probs differ by up to {out['ref_logps_max_rel_diff']:.2e} "
                            f"of their size (> {rtol:g})")
    if out["trl_tokens"] != out["tokens"]:
        failures.append(f"TRL's first batch has {out['trl_tokens']} tokens, this project's {out['tokens']}")
    if out["trl_positions"] != out["positions_padded"]:
        failures.append(f"TRL's first batch has {out['trl_positions']} positions, this project's padded one "
                        f"{out['positions_padded']}")
    if abs(losses64[TRL] - math.log(2)) < 1e-4:
        failures.append(f"loss {losses64[TRL]:.6f} is about log 2: policy and reference too close for a check")
    if failures:
        raise SystemExit("parity check failed on the first batch:\n  " + "\n  ".join(failures))
    return out


def parity_line(check: dict) -> str:
    def losses(kind: str) -> str:
        c = check[kind]
        return f"TRL {c['losses'][TRL]:.8f}, " + ", ".join(
            f"{k} {c['losses'][k]:.8f} (relative difference {d:.1e})" for k, d in c["rel_diff"].items())

    ref = check.get("ref_logps_max_rel_diff")
    return (f"loss in float64 {losses('float64')}; in float32 (the timed models) {losses('float32')}; "
            f"{check['tokens']} tokens on both sides"
            + ("" if ref is None else f"; precomputed reference log-probs differ by at most {ref:.1e} of their size"))


# --------------------------------------------------------------------------------------------------- running
def run(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer
    from transformers import logging as hf_logging
    from transformers.trainer_callback import PrinterCallback

    from wrpo_ray.toy.build import toy_model_path
    from wrpo_ray.toy.trl_peer import dpo_trainer, encode_rows, perturbed
    from wrpo_ray.train.batching import padding_id
    from wrpo_ray.train.policy import SequenceLogprobs

    hf_logging.set_verbosity_error()
    total = args.warmup + 1 + args.steps
    tokenizer = AutoTokenizer.from_pretrained(toy_model_path(args.arch))
    rows = preference_rows(tokenizer, args.micro_batch * total, args.prompt_tokens, args.response_tokens, args.seed)
    encoded, kept = encode_rows(tokenizer, rows, NO_LIMIT)
    assert len(kept) == len(rows)
    longest = max(len(ids) for e in encoded for ids in e["input_ids"])
    reference_lm, described = reference_model(args, longest)
    policy_lm = perturbed(reference_lm, NOISE, seed=1234)
    pad_id = padding_id(tokenizer)
    reference = SequenceLogprobs(copy.deepcopy(reference_lm)).eval().requires_grad_(False)
    precomputed = args.reference == "precomputed"
    if precomputed:
        precompute_reference(reference, encoded, args.micro_batch, pad_id)
    sides = [ProjectSide(p, copy.deepcopy(policy_lm), reference, pad_id, args.lr, total) for p in PACKINGS]
    batches = [encoded[i * args.micro_batch:(i + 1) * args.micro_batch] for i in range(total)]

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = dpo_trainer(
            copy.deepcopy(policy_lm), copy.deepcopy(reference_lm), rows, tokenizer, output_dir, beta=BETA,
            batch_size=args.micro_batch, max_length=None, precompute_ref_log_probs=precomputed,
            learning_rate=args.lr, optim="adamw_torch", weight_decay=0.0, lr_scheduler_type="constant",
            max_grad_norm=MAX_GRAD_NORM, gradient_accumulation_steps=1, max_steps=total, logging_strategy="no",
            disable_tqdm=True,
        )
        trainer.remove_callback(PrinterCallback)
        check = parity(trainer, sides, rows[:args.micro_batch], batches[0], tokenizer, reference_lm, policy_lm,
                       args.lr, args.loss_rtol)
        print(f"parity on the first batch: {parity_line(check)}", flush=True)
        interleaved = Interleaved(sides, batches, args.warmup)
        trainer.add_callback(trl_callback(interleaved))
        trainer.train()
    counted = sum(tokens(b) for b in batches)
    if trainer._total_train_tokens != counted:
        raise SystemExit(f"TRL counted {trainer._total_train_tokens} tokens over the run, this script {counted}")

    step_tokens = [tokens(batches[s - 1]) for s in interleaved.timed_steps]
    mean_tokens = statistics.mean(step_tokens)
    results = {}
    for name in interleaved.names:
        seconds = interleaved.seconds[name]
        median = statistics.median(seconds)
        packing = "padded" if name == TRL else name
        results[name] = {
            "seconds": seconds, "core_seconds": interleaved.core[name], "median_s": median,
            "median_core_s": statistics.median(interleaved.core[name]), "tokens_per_s": mean_tokens / median,
            "peak_bytes": interleaved.peak[name],
            "positions_per_step": statistics.mean(cost(batches[s - 1], packing)["positions"]
                                                  for s in interleaved.timed_steps),
        }
    trl = results[TRL]
    for name, r in results.items():
        r["speedup_vs_trl"] = r["tokens_per_s"] / trl["tokens_per_s"]
        r["core_speedup_vs_trl"] = trl["median_core_s"] / r["median_core_s"]
        r["memory_vs_trl"] = r["peak_bytes"] / trl["peak_bytes"]
        if name != TRL:
            r["goal_met"] = r["speedup_vs_trl"] >= GOAL_SPEEDUP and r["memory_vs_trl"] <= GOAL_MEMORY
    return {"model": described, "parity": check, "timed_steps": interleaved.timed_steps, "step_tokens": step_tokens,
            "tokens_per_step": mean_tokens, "results": results}


# ------------------------------------------------------------------------------------------------- reporting
def describe(payload: dict) -> list[str]:
    a = payload["args"]
    reference = ("precomputed before training on both sides (TRL `precompute_ref_log_probs=True`); no step does "
                 "reference work" if a["reference"] == "precomputed" else
                 "the frozen reference's forward inside every step on both sides")
    return [
        f"- model: {payload['model']}",
        f"- data: {a['micro_batch'] * (a['warmup'] + 1 + a['steps'])} synthetic rows, prompt:response about "
        f"{a['prompt_tokens']}:{a['response_tokens']} tokens (+-25%), chat template of the toy `{a['arch']}`",
        f"- steps: micro-batch {a['micro_batch']} examples, {a['warmup']} warm-up + 1 profiled + {a['steps']} timed "
        f"optimizer steps, interleaved; AdamW lr {a['lr']:g}, no weight decay, clip 1.0, float32",
        f"- reference log-probs: {reference}",
        "- tokens: TRL's `num_tokens` count (non-padding positions: prompt + chosen + prompt + rejected, chat "
        f"template included), {payload['tokens_per_step']:.0f} per timed step on average; tokens/s is that over the "
        "median step time",
        "- memory: peak bytes of tensors allocated during one optimizer step (torch.profiler allocation events, "
        "`bench_logprobs.peak_bytes`'s CPU method), the same for both sides",
    ]


def table(payload: dict) -> list[str]:
    lines = ["| side | batches | median step ms | tokens/s | x TRL tokens/s | median core ms | x TRL core | "
             "peak MiB | x TRL peak | positions/step |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in payload["results"].items():
        side, batches = ("TRL DPOTrainer", "padded") if name == TRL else ("wrpo-ray", name)
        lines.append(f"| {side} | {batches} | {r['median_s'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['speedup_vs_trl']:.2f} | {r['median_core_s'] * 1e3:.1f} | {r['core_speedup_vs_trl']:.2f} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {r['memory_vs_trl']:.2f} | {r['positions_per_step']:.0f} |")
    return lines


def goal_lines(payload: dict) -> list[str]:
    lines = []
    for name, r in payload["results"].items():
        if name == TRL:
            continue
        lines.append(f"- {name}: {r['speedup_vs_trl']:.2f}x TRL's tokens/s (goal >= {GOAL_SPEEDUP}x), "
                     f"{r['memory_vs_trl']:.2f}x its peak memory (goal <= {GOAL_MEMORY}x): "
                     f"goal {'met' if r['goal_met'] else 'not met'}")
    return lines


def render(payload: dict) -> str:
    env = payload["environment"]
    lines = [
        "# DPO training step: wrpo-ray against TRL's DPOTrainer",
        "",
        f"- command: `{payload['command']}`",
        machine_line(env),
        f"- torch threads {env['torch_threads']}; wall time {payload['wall_s']:.0f} s",
        *describe(payload),
        f"- parity on the first batch, before any step: {parity_line(payload['parity'])}",
        "",
        *table(payload),
        "",
        f"Goal: wrpo-ray >= {GOAL_SPEEDUP}x TRL's tokens/s at <= {GOAL_MEMORY}x its peak memory per step.",
        "",
        *goal_lines(payload),
        "",
        "A step: TRL from one `on_step_end` to the next (fetching and collating its batch, `training_step` with its "
        "metrics, clipping, optimizer and scheduler steps, the loop's bookkeeping); wrpo-ray `make_batch` from the "
        "tokenized rows, forward, loss, backward, clipping, optimizer step. Core: without building the batch "
        "(TRL `on_step_begin` to `on_step_end`).",
        "",
        "Step times (ms), in the order run:",
        "",
    ]
    for name, r in payload["results"].items():
        lines.append(f"- {name}: " + ", ".join(f"{t * 1e3:.1f}" for t in r["seconds"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="target", help="toy model: its tokenizer, chat template and config")
    p.add_argument("--hidden", type=int, help="a random model this wide instead of the toy's (FFN 4x, heads of 64)")
    p.add_argument("--layers", type=int, help="a random model this deep instead of the toy's")
    p.add_argument("--vocab", type=int, help="a random model with this many embedding/LM-head rows (the tokens "
                   "stay the toy tokenizer's)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--response-tokens", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=4, help="examples per optimizer step")
    p.add_argument("--warmup", type=int, default=2, help="steps not timed, before the profiled one")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--reference", choices=["precomputed", "model"], default="precomputed")
    p.add_argument("--threads", type=int, default=1, help="torch threads, 0 for torch's default (see above)")
    p.add_argument("--loss-rtol", type=float, default=1e-5, help="relative difference of the float64 losses "
                   "(and of the reference log-probs) the first-batch check allows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help="record under benchmarks/results/")
    p.add_argument("--out", help="results prefix (default: benchmarks/results/trl-dpo-cpu-<date>); implies --write")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")

    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's reference precompute and datasets' progress bars
    if args.threads:
        torch.set_num_threads(args.threads)
    env = dict(environment((*PACKAGES, "accelerate")), torch_threads=torch.get_num_threads())
    start = time.perf_counter()
    payload = run(args)
    command = "python benchmarks/bench_trl_dpo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload.update({"environment": env, "args": vars(args), "wall_s": time.perf_counter() - start,
                    "command": command})
    print("\n".join(table(payload) + [""] + goal_lines(payload)))
    if args.write or args.out:
        write_result(args.out, "trl-dpo-cpu", payload, render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One micro-batch's policy forward + backward and loss, padded unshared batches against prefix-shared packed
rows (`train.packing`), for DPO (two responses per prompt) and WRPO (three), as prompts and responses grow.

The paper measures WRPO at 1.16x DPO's training time (its Table 8): three sequences per prompt where DPO has
two. Packed, the prompt is computed once per example however many responses it has, and no padding is
computed, so WRPO's step can cost what an unshared DPO step costs. This measures exactly that step, in one
process, with no Ray or DeepSpeed around it (`bench_wrpo_vs_dpo.py` times whole Ray Train runs):

- time: the median of `--repeats` interleaved rounds after a warm-up, building the batch included (the
  worker builds one per micro-batch);
- memory: the peak bytes of tensors allocated during one step (`bench_logprobs.peak_bytes`: CUDA's
  counter, or the profiler's allocation events on CPU);
- tokens: positions the model computes (padding included), and attention scores (sum over rows of C^2).

Shapes are `prompt:response` token lengths; each example's lengths vary by +-25% around them (seeded) so the
padded batches carry the padding real data does. Every ratio is against padded DPO on the same shape.

Example (about 2 minutes on 2 CPU cores)::

    python benchmarks/bench_packing.py --write
    python benchmarks/bench_packing.py --shapes 256:256,1024:256 --hidden 1024 --layers 4 --device cuda
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_logprobs import environment, peak_bytes, timed  # noqa: E402
from record import write_result  # noqa: E402

from wrpo_ray.kernels import IGNORE_INDEX  # noqa: E402
from wrpo_ray.train.losses import LossConfig, PreferenceLogps, compute_loss  # noqa: E402
from wrpo_ray.train.packing import make_batch  # noqa: E402

DEFAULT_SHAPES = "32:32,128:128,512:128,128:512"
"""short, UltraFeedback-like (a prompt about as long as a response), prompt-heavy, response-heavy"""
VARIANTS = [("dpo", "padded"), ("dpo", "shared_prefix"), ("wrpo", "padded"), ("wrpo", "shared_prefix")]
LOSSES = {"dpo": LossConfig(objective="dpo", beta=0.1),
          "wrpo": LossConfig(objective="wrpo", inner="dpo", beta=0.1, alpha=0.5)}


def examples(n: int, prompt: int, response: int, responses: int, vocab: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def jitter(length: int) -> int:
        return max(1, round(length * rng.uniform(0.75, 1.25)))

    out = []
    for _ in range(n):
        p = [rng.randrange(3, vocab) for _ in range(jitter(prompt))]
        rs = [[rng.randrange(3, vocab) for _ in range(jitter(response))] for _ in range(responses)]
        out.append({"input_ids": [p + r for r in rs], "labels": [[IGNORE_INDEX] * len(p) + r for r in rs],
                    "num_response_tokens": [len(r) for r in rs]})
    return out


def toy_config(arch: str, hidden: int | None = None, layers: int | None = None):
    """The toy model ``arch``'s config, optionally wider (FFN 4x, heads of 64) or deeper."""
    from transformers import AutoConfig

    from wrpo_ray.toy.build import toy_model_path

    config = AutoConfig.from_pretrained(toy_model_path(arch))
    if hidden:
        config.hidden_size, config.intermediate_size = hidden, 4 * hidden
        config.num_attention_heads = config.num_key_value_heads = max(1, hidden // 64)
        config.head_dim = hidden // config.num_attention_heads
    if layers:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i % len(config.layer_types)] for i in range(layers)]
    return config


def model(args: argparse.Namespace):
    from transformers import AutoModelForCausalLM

    from wrpo_ray.train.policy import SequenceLogprobs

    config = toy_config(args.arch, args.hidden, args.layers)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lm.config.use_cache = False
    return SequenceLogprobs(lm).to(args.device).train()


def step(policy, rows: list[dict], objective: str, packing: str, device: str) -> torch.Tensor:
    batch = make_batch(rows, packing, 0, device)
    logps, n = policy(batch)
    r = len(rows[0]["input_ids"])
    shape = (-1, r)
    out = compute_loss(LOSSES[objective], PreferenceLogps(logps.view(shape), logps.detach().view(shape) - 0.1,
                                                          n.view(shape).float()), step=0, total_steps=10)
    loss = out.losses.mean()
    loss.backward()
    return loss.detach()


def cost(rows: list[dict], packing: str) -> dict:
    batch = make_batch(rows, packing, 0, "cpu")
    ids = batch.input_ids if packing == "shared_prefix" else batch["input_ids"]
    return {"positions": int(ids.numel()), "attention_scores": int(ids.shape[0] * ids.shape[1] ** 2)}


def run_shape(policy, prompt: int, response: int, args: argparse.Namespace) -> list[dict]:
    base = examples(args.micro_batch, prompt, response, 3, policy.lm.config.vocab_size, seed=prompt * 7 + response)
    rows = {"dpo": [{**e, "input_ids": e["input_ids"][1:], "labels": e["labels"][1:],
                     "num_response_tokens": e["num_response_tokens"][1:]} for e in base],  # (y_wt, y_l)
            "wrpo": base}
    results = {v: {"objective": v[0], "packing": v[1], "seconds": [], **cost(rows[v[0]], v[1])} for v in VARIANTS}
    for variant in VARIANTS:  # warm-up, and the memory of one step
        policy.zero_grad(set_to_none=True)
        step(policy, rows[variant[0]], *variant, args.device)
        policy.zero_grad(set_to_none=True)
        peak, _ = peak_bytes(step, (policy, rows[variant[0]], *variant, args.device), args.device)
        results[variant]["peak_bytes"] = peak
    for _ in range(args.repeats):
        for variant in VARIANTS:
            policy.zero_grad(set_to_none=True)
            wall, _, _ = timed(step, (policy, rows[variant[0]], *variant, args.device), args.device)
            results[variant]["seconds"].append(wall)
    out = []
    baseline = statistics.median(results[("dpo", "padded")]["seconds"])
    for variant in VARIANTS:
        r = results[variant]
        median = statistics.median(r["seconds"])
        out.append({"shape": f"{prompt}:{response}", **r, "median_s": median, "vs_padded_dpo": median / baseline})
    return out


def render(payload: dict) -> str:
    env = payload["environment"]
    lines = [
        "# Prefix-shared packing vs padded batches: one micro-batch's forward + backward",
        "",
        f"- command: `{payload['command']}`",
        f"- machine: {env['cpu']}, {env['cpu_count']} cores, torch threads {env['torch_threads']}, device "
        f"{env['device']}; {env['platform']}; load average {env['load_average']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- date: {env['date']}",
        f"- model: {payload['model']}; micro-batch {payload['args']['micro_batch']} examples; "
        f"{payload['args']['repeats']} timed rounds",
        "",
        "| prompt:response | objective | batches | median ms | x padded DPO | positions | attention scores | "
        "peak MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in payload["results"]:
        lines.append(f"| {r['shape']} | {r['objective']} | {r['packing']} | {r['median_s'] * 1e3:.1f} | "
                     f"{r['vs_padded_dpo']:.2f} | {r['positions']} | {r['attention_scores']} | "
                     f"{r['peak_bytes'] / 2**20:.1f} |")
    lines += ["", "Raw times (ms), in the order run:", ""]
    for r in payload["results"]:
        lines.append(f"- {r['shape']} {r['objective']} {r['packing']}: "
                     + ", ".join(f"{t * 1e3:.1f}" for t in r["seconds"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="prompt:response token lengths, comma separated")
    p.add_argument("--arch", default="target", help="toy model whose config is used (random weights)")
    p.add_argument("--hidden", type=int, help="hidden size instead of the toy's (FFN 4x, heads of 64)")
    p.add_argument("--layers", type=int, help="layers instead of the toy's")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--write", action="store_true", help="record under benchmarks/results/")
    p.add_argument("--out", help="results prefix (default: results/packing-<device>-<date>)")
    args = p.parse_args(argv)

    policy = model(args)
    c = policy.lm.config
    described = (f"{args.arch} config, hidden {c.hidden_size}, {c.num_hidden_layers} layers, vocab {c.vocab_size}, "
                 "float32, random weights")
    results = []
    for shape in args.shapes.split(","):
        prompt, response = (int(x) for x in shape.split(":"))
        for r in run_shape(policy, prompt, response, args):
            results.append(r)
            print(f"{r['shape']:>9} {r['objective']:>4} {r['packing']:>13}: {r['median_s'] * 1e3:8.1f} ms  "
                  f"{r['vs_padded_dpo']:.2f}x padded DPO  positions {r['positions']:6d}  "
                  f"peak {r['peak_bytes'] / 2**20:7.1f} MiB", flush=True)
    payload = {"environment": environment(args.device), "args": vars(args), "model": described,
               "results": results, "command": "python benchmarks/bench_packing.py " + " ".join(sys.argv[1:])}
    if args.write or args.out:
        write_result(args.out, f"packing-{args.device}", payload, render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

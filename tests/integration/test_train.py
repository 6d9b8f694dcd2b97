"""WRPO on real Ray Train with 2 CPU workers and DeepSpeed ZeRO-3 on the tiny target model."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wrpo_ray.config import parse_config
from wrpo_ray.toy.build import toy_model_path
from wrpo_ray.toy.task import make_preference_rows
from wrpo_ray.train.losses import alpha_at

pytestmark = pytest.mark.integration

ROWS = 16
ALPHA = 0.5


def _preference_rows() -> list[dict]:
    return make_preference_rows(ROWS, seed=3)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pref") / "pref.jsonl"
    lines = [json.dumps(r) for r in _preference_rows()]
    lines.append(json.dumps({"prompt_id": "bad-empty", "prompt": "Add: 1+1", "y_ws": "2", "y_wt": "", "y_l": "3"}))
    lines.append(json.dumps({"prompt_id": "bad-missing", "prompt": "Add: 1+2", "y_ws": "3", "y_l": "4"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(data_file: Path, out: Path, **extra):
    return parse_config({"train": {
        "policy": {"name": "target", "path": "toy://target", "dtype": "float32"},
        "data": str(data_file), "output_dir": str(out),
        "num_workers": 2, "zero_stage": 3, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
        "learning_rate": 2e-3, "warmup_ratio": 0.0, "max_length": 64, "max_prompt_length": 32,
        "save_steps": 1,
        "loss": {"objective": "wrpo", "inner": "dpo", "beta": 0.5, "alpha": ALPHA},
        **extra,
    }}).train


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    from wrpo_ray.train.run import run_training

    out = tmp_path_factory.mktemp("wrpo")
    first = run_training(_cfg(data_file, out, max_steps=2), "preference")
    second = run_training(_cfg(data_file, out), "preference")
    return out, first, second


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_counts_and_quarantine(trained):
    out, first, second = trained
    assert second["rows"] == {"in": ROWS + 2, "outside_split": 0, "examples": ROWS, "trained": ROWS, "quarantined": 2,
                              "unused_per_epoch": 0}
    assert second["reference"] == "precomputed column"
    assert second["steps"] == {"total": ROWS // 4, "completed": ROWS // 4, "per_epoch": ROWS // 4}


def test_stop_and_resume_continue_at_same_step_and_alpha(trained):
    out, first, second = trained
    assert first["steps"]["completed"] == 2
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    total = ROWS // 4
    for m in metrics:
        assert m["alpha"] == pytest.approx(alpha_at(m["step"] - 1, total, ALPHA))
    for key in ("rewards/source", "rewards/target", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "rewards/source_accuracies", "rewards/target_accuracies", "logps/source"):
        assert key in metrics[-1]


def test_training_lowers_the_loss_on_its_data(trained):
    """WRPO loss over the whole dataset: policy == reference gives log 2; after training it is lower."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wrpo_ray.train.batching import collate, tokenize_example
    from wrpo_ray.train.losses import LossConfig, PreferenceLogps, wrpo_loss
    from wrpo_ray.train.policy import SequenceLogprobs

    out, _, second = trained
    tok = AutoTokenizer.from_pretrained(second["model_dir"])
    encs = []
    for r in _preference_rows():
        enc, _, _ = tokenize_example(tok, [{"role": "user", "content": r["prompt"]}],
                                     [r["y_ws"], r["y_wt"], r["y_l"]], max_length=64, max_prompt_length=32)
        encs.append(enc)
    batch = collate(encs, tok.pad_token_id)

    def logps(path):
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        with torch.no_grad():
            lp, n = SequenceLogprobs(lm).eval()(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return lp.view(-1, 3), n.view(-1, 3).float()

    ref, lengths = logps(str(toy_model_path("target")))
    pol, _ = logps(second["model_dir"])
    cfg = LossConfig(objective="wrpo", inner="dpo", beta=0.5, alpha=ALPHA)
    before = wrpo_loss(cfg, PreferenceLogps(ref, ref, lengths), ALPHA).losses.mean().item()
    after = wrpo_loss(cfg, PreferenceLogps(pol, ref, lengths), ALPHA).losses.mean().item()
    assert before == pytest.approx(0.6931, abs=1e-3)
    assert after < before - 0.05


def test_saved_model_loads_and_generates_with_vllm(trained):
    _, _, second = trained
    model_dir = Path(second["model_dir"])
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer_config.json").is_file()
    script = textwrap.dedent(f"""
        from vllm import LLM, SamplingParams
        if __name__ == "__main__":
            llm = LLM(model={str(model_dir)!r}, dtype="float32", max_model_len=256,
                      kv_cache_memory_bytes=64 * 2**20, seed=0, enforce_eager=True)
            out = llm.generate(["Add: 2+3"], SamplingParams(max_tokens=8, temperature=0.0))
            print("GENERATED", len(out[0].outputs[0].token_ids))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert "GENERATED" in proc.stdout, proc.stderr[-3000:]
    assert int(proc.stdout.split("GENERATED")[1].split()[0]) >= 1

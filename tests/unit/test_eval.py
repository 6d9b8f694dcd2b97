import json
import math

import numpy as np
import pytest

from wrpo_ray.eval.report import (
    format_results_markdown,
    format_results_table,
    format_win_shares,
    plot_reward_dynamics,
    read_metrics,
)
from wrpo_ray.eval.winrate import (
    ModelReport,
    accuracy_by_skill,
    bootstrap_ci,
    build_report,
    fit_logistic,
    length_adjusted_win_rate,
    pairwise_win_rate,
)


def test_win_rate_by_hand_with_ties():
    # win, loss, tie, win, tie -> (1 + 0 + 0.5 + 1 + 0.5) / 5
    model, base = [3, 1, 2, 5, 0], [2, 2, 2, 4, 0]
    assert pairwise_win_rate(model, base) == pytest.approx(60.0)
    assert pairwise_win_rate(model, base, tie=0.0) == pytest.approx(40.0)
    assert pairwise_win_rate([1, 1], [1, 1]) == 50.0


def test_win_rate_rejects_bad_input():
    with pytest.raises(ValueError):
        pairwise_win_rate([1, 2], [1])
    with pytest.raises(ValueError):
        pairwise_win_rate([], [])
    with pytest.raises(ValueError):
        pairwise_win_rate([math.nan], [0.0])


def test_lc_equals_raw_when_lengths_equal():
    model, base = [3, 1, 2, 5, 0, 1], [2, 2, 2, 4, 0, 0]
    lengths = [40] * 6
    assert length_adjusted_win_rate(model, base, lengths, lengths) == pytest.approx(pairwise_win_rate(model, base))
    shifted = [50] * 6
    assert length_adjusted_win_rate(model, base, shifted, lengths) == pytest.approx(pairwise_win_rate(model, base))


def test_lc_equals_raw_when_length_is_uninformative():
    # Every outcome occurs equally often with the model longer and shorter, so the fitted length slope is zero.
    outcomes = [1.0, 1.0, 1.0, 0.5, 0.0]
    model = [o for o in outcomes for _ in (0, 1)]
    base = [0.5] * len(model)
    model_len = [100 + d for _ in outcomes for d in (30, -30)]
    base_len = [100] * len(model)
    raw = pairwise_win_rate(model, base)
    assert raw == pytest.approx(70.0)
    assert length_adjusted_win_rate(model, base, model_len, base_len) == pytest.approx(raw, abs=1e-6)


def _length_explained(n: int, seed: int = 1):
    """The model is longer on 80% of prompts and wins 90% of those, but only 10% when shorter."""
    rng = np.random.default_rng(seed)
    longer = rng.random(n) < 0.8
    wins = np.where(longer, rng.random(n) < 0.9, rng.random(n) < 0.1)
    model_len = np.where(longer, 150.0, 50.0) + rng.normal(0.0, 5.0, n)
    return wins.astype(float), np.full(n, 0.5), model_len, np.full(n, 100.0)


def test_lc_moves_toward_half_when_wins_are_explained_by_length():
    model, base, model_len, base_len = _length_explained(400)
    raw = pairwise_win_rate(model, base)
    lc = length_adjusted_win_rate(model, base, model_len, base_len)
    assert raw > 65.0
    assert abs(lc - 50.0) < 5.0
    assert abs(lc - 50.0) < abs(raw - 50.0)
    # Losses explained by being shorter are credited back the same way.
    assert length_adjusted_win_rate(1 - model, base, model_len, base_len) == pytest.approx(100.0 - lc, abs=1e-6)


@pytest.mark.parametrize("model", [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
def test_lc_degenerate_outcomes_are_finite(model):
    base = [1.0, 1.0, 1.0]
    lc = length_adjusted_win_rate(model, base, [10, 500, 30], [20, 20, 20])
    assert lc == pytest.approx(pairwise_win_rate(model, base))


def test_lc_perfectly_separable_by_length_stays_finite():
    model, base = [1.0, 1.0, 0.0, 0.0], [0.5] * 4
    lc = length_adjusted_win_rate(model, base, [200, 190, 10, 20], [100] * 4)
    assert math.isfinite(lc) and 0.0 < lc < 100.0


def test_fit_logistic_recovers_coefficients():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20000)
    y = (rng.random(x.size) < 1 / (1 + np.exp(-(0.5 + 2.0 * x)))).astype(float)
    a, b = fit_logistic(y, x, l2=0.0)
    assert a == pytest.approx(0.5, abs=0.1) and b == pytest.approx(2.0, abs=0.15)


def test_bootstrap_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(3)

    def widths(n: int) -> tuple[float, float, float]:
        model, base = rng.normal(0.3, 1.0, n), rng.normal(0.0, 1.0, n)
        lo, hi = bootstrap_ci(pairwise_win_rate, model, base, n_resamples=300)
        return lo, pairwise_win_rate(model, base), hi

    lo_s, est_s, hi_s = widths(40)
    lo_l, est_l, hi_l = widths(2000)
    assert lo_s <= est_s <= hi_s and lo_l <= est_l <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3


def test_bootstrap_is_paired_and_deterministic():
    model, base = [1, 2, 3, 4], [1, 2, 3, 4]
    assert bootstrap_ci(pairwise_win_rate, model, base, n_resamples=50) == (50.0, 50.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert bootstrap_ci(pairwise_win_rate, a, b, seed=7) == bootstrap_ci(pairwise_win_rate, a, b, seed=7)
    with pytest.raises(ValueError):
        bootstrap_ci(pairwise_win_rate, [1, 2], [1])


def test_accuracy_by_skill():
    acc = accuracy_by_skill([1, 0, 1, 1, None, 0.5, math.nan], ["rev", "rev", "add", "add", "sort", "sort", "up"])
    assert acc == {"add": 100.0, "rev": 50.0, "sort": 50.0}
    assert list(acc) == ["add", "rev", "sort"]


def _records():
    skills = ["add", "rev"]
    out = []
    for model, bonus, extra_len in [("Target-SFT", 0.0, 0), ("Target-SFT-WRPO", 1.0, 5), ("Target", -1.0, -5)]:
        for i in range(12):
            score = float(i % 3) + bonus
            out.append({"model": model, "prompt_id": f"p{i:02d}", "skill": skills[i % 2], "score": score,
                        "response": "x" * (20 + extra_len + i), "correct": float(score > 1.0)})
    return out


def test_build_report_shapes_and_determinism():
    reports = build_report(_records(), "Target-SFT", n_resamples=200, seed=0)
    assert list(reports) == ["Target-SFT", "Target-SFT-WRPO", "Target"]
    base, wrpo, target = reports["Target-SFT"], reports["Target-SFT-WRPO"], reports["Target"]
    assert isinstance(wrpo, ModelReport)
    assert base.win_rate == 50.0 and base.win_rate_ci == (50.0, 50.0) and base.la_win_rate == 50.0
    assert wrpo.win_rate == 100.0 and wrpo.wins == 12 and wrpo.num_paired == 12
    assert target.win_rate == 0.0 and target.losses == 12
    assert wrpo.mean_length == pytest.approx(25 + 5.5)
    assert set(wrpo.accuracy) == {"add", "rev"}
    assert base.overall_accuracy == pytest.approx(100.0 * 4 / 12)
    assert build_report(_records(), "Target-SFT", n_resamples=200, seed=0) == reports


def test_build_report_pairs_by_prompt_and_skips_unjudged():
    records = {
        "base": [{"prompt_id": "a", "score": 0.0}, {"prompt_id": "b", "score": 0.0}, {"prompt_id": "c", "score": 0}],
        "m": [{"prompt_id": "c", "score": 1.0}, {"prompt_id": "a", "score": -1.0}, {"prompt_id": "b", "score": None}],
    }
    m = build_report(records, "base", n_resamples=20)["m"]
    assert (m.num_prompts, m.num_paired, m.win_rate) == (3, 2, 50.0)
    with pytest.raises(ValueError):
        build_report(records, "missing")
    with pytest.raises(ValueError):
        build_report({"base": [{"prompt_id": "a", "score": 0.0}] * 2}, "base")


def test_results_tables_contain_models_and_numbers():
    reports = build_report(_records(), "Target-SFT", n_resamples=50)
    for text in (format_results_table(reports, "Target-SFT"), format_results_markdown(reports, "Target-SFT")):
        for name in ("Target", "Target-SFT", "Target-SFT-WRPO"):
            assert name in text
        assert "100.0 [100.0, 100.0]" in text and "Acc add %" in text and "LA WR" in text
    lines = format_results_table(reports, "Target-SFT").splitlines()
    assert lines[3].startswith("Target-SFT ") and lines[4].startswith("Target-SFT-WRPO")
    assert format_results_markdown(reports, "Target-SFT").splitlines()[4].startswith("| Target-SFT |")


def test_win_shares_table():
    text = format_win_shares({"qwen": 0.25, "llama": 0.75, "mistral": 0.0})
    lines = text.splitlines()
    assert lines[2].split() == ["llama", "75.0"] and lines[4].split() == ["mistral", "0.0"]
    assert format_win_shares({"a": 1.0}, markdown=True).splitlines()[2] == "| a | 100.0 |"


def test_plot_reward_dynamics_writes_png(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(1, 6):
        lines.append(json.dumps({
            "step": step, "alpha": step / 5, "loss": 0.69 - 0.01 * step, "lr": 1e-6,
            "rewards/source": 0.01 * step, "rewards/target": 0.02 * step, "rewards/chosen": 0.015 * step,
            "rewards/rejected": -0.01 * step, "rewards/margins": 0.025 * step, "rewards/accuracies": 0.5,
            "rewards/source_accuracies": 0.4, "rewards/target_accuracies": 0.6,
            "logps/source": -80.0, "logps/target": -40.0, "logps/rejected": -45.0,
        }))
    metrics.write_text("\n".join(lines) + '\n{"step": 6, "trunc')
    out = plot_reward_dynamics(metrics, tmp_path / "plots" / "dynamics.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4, 5]

    dpo = tmp_path / "dpo.jsonl"
    dpo.write_text("\n".join(json.dumps({"step": s, "loss": 0.6, "rewards/chosen": 0.1, "rewards/rejected": 0.0,
                                         "rewards/margins": 0.1, "rewards/accuracies": 1.0,
                                         "logps/chosen": -30.0, "logps/rejected": -35.0}) for s in (1, 2)))
    assert plot_reward_dynamics(dpo, tmp_path / "dpo.png").stat().st_size > 5000
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError):
        plot_reward_dynamics(empty, tmp_path / "empty.png")


def test_method_differences_are_paired_over_the_same_prompts():
    from wrpo_ray.eval.differences import later_minus_earlier, method_differences
    from wrpo_ray.eval.report import format_differences_table

    n = 40
    base = [{"prompt_id": str(i), "score": 0.5, "correct": 0.0} for i in range(n)]
    # A beats the baseline on every prompt; B on the first half only, and A is right where B is right, and more
    a = [{"prompt_id": str(i), "score": 1.0, "correct": float(i < 30)} for i in range(n)]
    b = [{"prompt_id": str(i), "score": 1.0 if i < n // 2 else 0.0, "correct": float(i < 10)} for i in range(n)]
    records = {"base": base, "B": b, "A": a, "C": [{"prompt_id": "x", "score": 1.0}]}
    assert later_minus_earlier(["base", "B", "A"]) == [("B", "base"), ("A", "base"), ("A", "B")]
    diffs = method_differences({k: records[k] for k in ("base", "B", "A")}, "base", ["base", "B", "A", "absent"],
                              n_resamples=200)
    a_b = diffs[-1]
    assert (a_b.model, a_b.other, a_b.num_paired) == ("A", "B", n)
    assert a_b.win_rate_diff == pytest.approx(100.0 - 50.0) and a_b.win_rate_clear
    assert a_b.head_to_head == pytest.approx(75.0)  # A's 1.0 beats B's 0.0 on half, ties on the other half
    assert a_b.accuracy_diff == pytest.approx(50.0) and a_b.accuracy_clear and a_b.num_accuracy == n
    assert a_b.win_rate_diff_ci[0] <= a_b.win_rate_diff <= a_b.win_rate_diff_ci[1]
    b_base = diffs[0]
    assert b_base.win_rate_diff == pytest.approx(0.0) and not b_base.win_rate_clear  # B wins half: 50 - 50
    assert "A - B" in format_differences_table(diffs) and " *" in format_differences_table(diffs)
    unchecked = {"base": [{"prompt_id": "1", "score": 0.0}], "A": [{"prompt_id": "1", "score": 1.0}]}
    no_checks = method_differences(unchecked, "base", ["base", "A"], n_resamples=10)[0]
    assert no_checks.accuracy_diff is None and no_checks.num_accuracy == 0
    with pytest.raises(ValueError, match="share no judged prompt"):
        method_differences({"base": base, "C": records["C"]}, "base", ["base", "C"], n_resamples=10)


def test_methods_with_seeds_are_compared_seed_by_seed_with_their_spread():
    from wrpo_ray.eval.differences import method_differences, seed_pairs
    from wrpo_ray.eval.report import format_differences_table

    n = 20
    base = [{"prompt_id": str(i), "score": 0.5, "correct": 0.0} for i in range(n)]

    def model(wins: int, right: int) -> list[dict]:
        return [{"prompt_id": str(i), "score": 1.0 if i < wins else 0.0, "correct": float(i < right)} for i in range(n)]

    records = {"base": base, "D-s0": model(10, 4), "D-s1": model(12, 6), "W-s0": model(14, 8), "W-s1": model(18, 8)}
    groups = {"D": ["D-s0", "D-s1"], "W": ["W-s0", "W-s1"]}
    diffs = method_differences(records, "base", ["base", "D-s0", "D-s1", "W-s0", "W-s1"], groups, n_resamples=200)
    assert [(d.model, d.other, d.pairs) for d in diffs] == [("D", "base", 2), ("W", "base", 2), ("W", "D", 2)]
    w_d = diffs[-1]
    # per seed pair: W-s0 - D-s0 wins 14 vs 10 of 20 = +20 points, W-s1 - D-s1 18 vs 12 = +30 points
    assert w_d.win_rate_diff_per_pair == pytest.approx([20.0, 30.0]) and w_d.win_rate_diff == pytest.approx(25.0)
    assert w_d.win_rate_diff_sd == pytest.approx(np.std([20.0, 30.0], ddof=1))
    assert w_d.accuracy_diff_per_pair == pytest.approx([20.0, 10.0])
    assert "sd 7.1" in format_differences_table(diffs)
    assert seed_pairs(["a"], ["b1", "b2"]) == [("a", "b1"), ("a", "b2")]
    with pytest.raises(ValueError, match="seed by seed"):
        seed_pairs(["a1", "a2"], ["b1", "b2", "b3"])

import math

from wrpo_ray.generate.select import rank, select_best, select_best_and_worst, win_shares


def s(model, idx, reward, text="x"):
    return {"model": model, "sample_idx": idx, "reward": reward, "response": text}


def test_best_is_argmax():
    best = select_best([s("a", 0, 0.1), s("b", 0, 0.9), s("a", 1, 0.5)])
    assert (best["model"], best["sample_idx"]) == ("b", 0)


def test_ties_break_by_model_then_sample_index():
    samples = [s("b", 0, 1.0), s("a", 2, 1.0), s("a", 1, 1.0)]
    assert [(x["model"], x["sample_idx"]) for x in rank(samples)] == [("a", 1), ("a", 2), ("b", 0)]
    assert select_best(list(reversed(samples)))["sample_idx"] == 1


def test_nan_and_missing_rewards_never_win():
    best = select_best([s("a", 0, math.nan), s("b", 0, -5.0), s("c", 0, None), s("d", 0, math.inf)])
    assert best["model"] == "b"
    assert select_best([s("a", 0, math.nan)]) is None


def test_best_and_worst():
    best, worst = select_best_and_worst([s("t", 0, 0.2), s("t", 1, 0.9), s("t", 2, -0.3)])
    assert (best["sample_idx"], worst["sample_idx"]) == (1, 2)
    assert select_best_and_worst([s("t", 0, 0.5), s("t", 1, 0.5)]) is None
    assert select_best_and_worst([s("t", 0, 0.5)]) is None


def test_win_shares_lists_every_model():
    shares = win_shares(["a", "a", "b", "a"], ["a", "b", "c"])
    assert shares == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert win_shares([], ["a"]) == {"a": 0.0}

import math

from wrpo_ray.generate.select import rank, win_shares


def s(model, idx, reward, text="x"):
    return {"model": model, "sample_idx": idx, "reward": reward, "response": text}


def test_best_is_first():
    best = rank([s("a", 0, 0.1), s("b", 0, 0.9), s("a", 1, 0.5)])[0]
    assert (best["model"], best["sample_idx"]) == ("b", 0)


def test_ties_break_by_model_then_sample_index():
    samples = [s("b", 0, 1.0), s("a", 2, 1.0), s("a", 1, 1.0)]
    assert [(x["model"], x["sample_idx"]) for x in rank(samples)] == [("a", 1), ("a", 2), ("b", 0)]
    assert rank(list(reversed(samples)))[0]["sample_idx"] == 1


def test_nan_and_missing_rewards_never_win():
    ranked = rank([s("a", 0, math.nan), s("b", 0, -5.0), s("c", 0, None), s("d", 0, math.inf)])
    assert [x["model"] for x in ranked] == ["b"]
    assert rank([s("a", 0, math.nan)]) == []


def test_win_shares_lists_every_model():
    shares = win_shares(["a", "a", "b", "a"], ["a", "b", "c"])
    assert shares == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert win_shares([], ["a"]) == {"a": 0.0}

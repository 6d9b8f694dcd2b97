import itertools
import math

import pytest
import torch

from wrpo_ray.train.losses import (
    LossConfig,
    PreferenceLogps,
    alpha_at,
    compute_loss,
    log_ratios,
    pairwise_loss,
    wrpo_loss,
)

# One example, columns (y_ws, y_wt, y_l): log-ratios r = (1, 0.5, -1), mean log-probs (-2, -3, -5).
POLICY = [[-10.0, -12.0, -15.0]]
REFERENCE = [[-11.0, -12.5, -14.0]]
LENGTHS = [[5, 4, 3]]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def quad(policy=POLICY, reference=REFERENCE, lengths=LENGTHS) -> PreferenceLogps:
    return PreferenceLogps(
        torch.tensor(policy, dtype=torch.float64),
        None if reference is None else torch.tensor(reference, dtype=torch.float64),
        None if lengths is None else torch.tensor(lengths),
    )


def pair(logps: PreferenceLogps, chosen: int, rejected: int = 2) -> PreferenceLogps:
    cols = [chosen, rejected]
    return PreferenceLogps(*(None if t is None else t[:, cols] for t in logps))


def random_quad(batch: int = 6, seed: int = 0) -> PreferenceLogps:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (batch, 3), generator=g)
    policy = -lengths * torch.rand(batch, 3, generator=g, dtype=torch.float64) * 3
    reference = policy + torch.randn(batch, 3, generator=g, dtype=torch.float64)
    return PreferenceLogps(policy, reference, lengths)


def wrpo_cfg(inner: str, **kw) -> LossConfig:
    return LossConfig.paper_defaults("wrpo", inner, **kw)


# Hand-computed values.


def test_dpo_by_hand():
    cfg = LossConfig(objective="dpo", beta=0.1)
    out = pairwise_loss(cfg, pair(quad(), chosen=1))
    assert out.losses.item() == pytest.approx(softplus(-0.1 * 1.5))


def test_dpo_label_smoothing_by_hand():
    cfg = LossConfig(objective="dpo", beta=0.1, label_smoothing=0.2)
    out = pairwise_loss(cfg, pair(quad(), chosen=1))
    z = 0.1 * 1.5
    assert out.losses.item() == pytest.approx(0.8 * softplus(-z) + 0.2 * softplus(z))


def test_simpo_by_hand():
    cfg = LossConfig(objective="simpo", beta=2.0, gamma=0.5)
    out = pairwise_loss(cfg, pair(quad(reference=None), chosen=0))
    assert out.losses.item() == pytest.approx(softplus(-(2.0 * (-2.0 + 5.0) - 0.5)))
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-4.0)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-10.0)


def test_ipo_by_hand_length_normalised_and_summed():
    normalised = pairwise_loss(LossConfig(objective="ipo", tau=0.25), pair(quad(), chosen=1))
    assert normalised.losses.item() == pytest.approx((0.5 / 4 + 1 / 3 - 2.0) ** 2)
    summed = LossConfig(objective="ipo", tau=0.25, ipo_length_normalize=False)
    assert pairwise_loss(summed, pair(quad(lengths=None), chosen=1)).losses.item() == pytest.approx(0.25)


def test_wrpo_dpo_by_hand():
    out = wrpo_loss(LossConfig(beta=0.1), quad(), alpha=0.5)
    assert out.losses.item() == pytest.approx(softplus(-0.1 * (0.5 * 1 + 0.5 * 0.5 + 1)))


def test_wrpo_simpo_by_hand():
    cfg = wrpo_cfg("simpo", beta=2.0, gamma=0.5)
    out = wrpo_loss(cfg, quad(reference=None), alpha=0.25)
    weighted = 0.25 * -2.0 + 0.75 * -3.0
    assert out.losses.item() == pytest.approx(softplus(-(2.0 * (weighted + 5.0) - 0.5)))


def test_wrpo_ipo_by_hand():
    out = wrpo_loss(wrpo_cfg("ipo", tau=0.25), quad(), alpha=0.5)
    weighted = 0.5 * (1 / 5) + 0.5 * (0.5 / 4)
    assert out.losses.item() == pytest.approx((weighted + 1 / 3 - 2.0) ** 2)


def test_wrpo_dpo_label_smoothing():
    out = wrpo_loss(LossConfig(beta=0.1, label_smoothing=0.1), quad(), alpha=0.5)
    z = 0.1 * 1.75
    assert out.losses.item() == pytest.approx(0.9 * softplus(-z) + 0.1 * softplus(z))


def test_zero_label_smoothing_is_plain_logsigmoid():
    logps = random_quad()
    out = wrpo_loss(LossConfig(beta=0.3), logps, alpha=0.4)
    r = logps.policy - logps.reference
    expected = -torch.nn.functional.logsigmoid(0.3 * (0.4 * r[:, 0] + 0.6 * r[:, 1] - r[:, 2]))
    torch.testing.assert_close(out.losses, expected)


# Identities: WRPO at alpha 0 / 1 is the inner objective on (y_wt, y_l) / (y_ws, y_l).


@pytest.mark.parametrize("inner", ["dpo", "ipo", "simpo"])
@pytest.mark.parametrize(("alpha", "chosen"), [(0.0, 1), (1.0, 0)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_wrpo_endpoints_equal_pairwise(inner, alpha, chosen, label_smoothing):
    logps = random_quad()
    cfg = wrpo_cfg(inner, label_smoothing=label_smoothing)
    baseline = LossConfig(
        objective=inner, beta=cfg.beta, gamma=cfg.gamma, tau=cfg.tau, label_smoothing=label_smoothing
    )
    fused = wrpo_loss(cfg, logps, alpha)
    single = pairwise_loss(baseline, pair(logps, chosen))
    torch.testing.assert_close(fused.losses, single.losses)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        torch.testing.assert_close(fused.metrics[key], single.metrics[key])


def test_wrpo_is_linear_in_alpha_inside_the_sigmoid():
    logps = random_quad()
    cfg = LossConfig(beta=0.5)
    r = logps.policy - logps.reference
    for alpha in (0.0, 0.3, 0.7, 1.0):
        logits = 0.5 * (alpha * r[:, 0] + (1 - alpha) * r[:, 1] - r[:, 2])
        torch.testing.assert_close(wrpo_loss(cfg, logps, alpha).losses, torch.nn.functional.softplus(-logits))


# Alpha schedule.


def test_dynamic_alpha_endpoints_and_linearity():
    values = [alpha_at(s, 11, 0.1, "dynamic") for s in range(11)]
    assert values[0] == 0.0
    assert values[-1] == pytest.approx(0.1)
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert steps == pytest.approx([0.01] * 10)
    assert alpha_at(50, 11, 0.1, "dynamic") == pytest.approx(0.1)


def test_static_alpha_and_single_step_run():
    assert [alpha_at(s, 5, 0.3, "static") for s in range(5)] == [0.3] * 5
    assert alpha_at(0, 1, 0.3, "dynamic") == 0.3


def test_alpha_schedule_rejects_bad_input():
    with pytest.raises(ValueError):
        alpha_at(0, 10, 0.1, "cosine")
    with pytest.raises(ValueError):
        alpha_at(-1, 10, 0.1)
    with pytest.raises(ValueError):
        alpha_at(0, 0, 0.1)


def test_compute_loss_follows_the_schedule():
    logps = random_quad()
    cfg = LossConfig(beta=0.1, alpha=0.6)
    first = compute_loss(cfg, logps, step=0, total_steps=7)
    torch.testing.assert_close(
        first.losses, pairwise_loss(LossConfig(objective="dpo", beta=0.1), pair(logps, 1)).losses
    )
    assert first.metrics["alpha"].item() == 0.0
    mid = compute_loss(cfg, logps, step=3, total_steps=7)
    torch.testing.assert_close(mid.losses, wrpo_loss(cfg, logps, 0.3).losses)
    last = compute_loss(cfg, logps, step=6, total_steps=7)
    assert last.metrics["alpha"].item() == pytest.approx(0.6)
    static = compute_loss(LossConfig(beta=0.1, alpha=0.6, schedule="static"), logps, step=0, total_steps=7)
    torch.testing.assert_close(static.losses, last.losses)


def test_compute_loss_dispatches_pairwise():
    logps = pair(random_quad(), 0)
    cfg = LossConfig.paper_defaults("simpo")
    torch.testing.assert_close(compute_loss(cfg, logps, 3, 10).losses, pairwise_loss(cfg, logps).losses)


# Metrics.


def test_wrpo_metrics_by_hand():
    # Example 2 has r = (-2, 1, 0): source loses to rejected, target wins, weighted (-0.5) loses.
    logps = quad(
        policy=[[-10.0, -12.0, -15.0], [-20.0, -8.0, -9.0]],
        reference=[[-11.0, -12.5, -14.0], [-18.0, -9.0, -9.0]],
        lengths=None,
    )
    m = wrpo_loss(LossConfig(beta=0.1), logps, alpha=0.5).metrics
    expected = {
        "alpha": 0.5,
        "rewards/source": 0.1 * (1 - 2) / 2,
        "rewards/target": 0.1 * (0.5 + 1) / 2,
        "rewards/chosen": 0.1 * (0.75 - 0.5) / 2,
        "rewards/rejected": 0.1 * (-1 + 0) / 2,
        "rewards/margins": 0.1 * (1.75 - 0.5) / 2,
        "rewards/accuracies": 0.5,
        "rewards/source_accuracies": 0.5,
        "rewards/target_accuracies": 1.0,
        "logps/source": -15.0,
        "logps/target": -10.0,
        "logps/rejected": -12.0,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key].item() == pytest.approx(value), key
        assert m[key].dim() == 0 and not m[key].requires_grad


def test_pairwise_metrics_by_hand():
    m = pairwise_loss(LossConfig(objective="dpo", beta=0.1), pair(quad(), 0)).metrics
    assert m["rewards/chosen"].item() == pytest.approx(0.1)
    assert m["rewards/rejected"].item() == pytest.approx(-0.1)
    assert m["rewards/margins"].item() == pytest.approx(0.2)
    assert m["rewards/accuracies"].item() == 1.0
    assert m["logps/chosen"].item() == -10.0
    assert m["logps/rejected"].item() == -15.0


def test_ipo_rewards_are_scaled_by_tau():
    m = pairwise_loss(LossConfig(objective="ipo", tau=0.25), pair(quad(), 0)).metrics
    assert m["rewards/chosen"].item() == pytest.approx(0.25 * 1 / 5)


# Gradients.


def test_gradients_reach_only_policy_logps():
    policy = torch.tensor(POLICY, requires_grad=True)
    reference = torch.tensor(REFERENCE, requires_grad=True)
    lengths = torch.tensor([[5.0, 4.0, 3.0]], requires_grad=True)
    for cfg in (LossConfig(beta=0.1), wrpo_cfg("ipo"), wrpo_cfg("simpo")):
        policy.grad = None
        out = wrpo_loss(cfg, PreferenceLogps(policy, reference, lengths), alpha=0.5)
        out.losses.sum().backward()
        assert policy.grad is not None and torch.all(policy.grad != 0)
        assert reference.grad is None and lengths.grad is None


def test_dpo_gradient_by_hand():
    policy = torch.tensor(POLICY, dtype=torch.float64, requires_grad=True)
    out = wrpo_loss(
        LossConfig(beta=0.1), PreferenceLogps(policy, torch.tensor(REFERENCE, dtype=torch.float64)), 0.5
    )
    out.losses.sum().backward()
    s = 1 / (1 + math.exp(0.1 * 1.75))  # sigmoid(-z)
    expected = [[-0.1 * 0.5 * s, -0.1 * 0.5 * s, 0.1 * s]]
    torch.testing.assert_close(policy.grad, torch.tensor(expected, dtype=torch.float64))


def test_bf16_inputs_are_upcast():
    logps = random_quad()
    out = wrpo_loss(LossConfig(), PreferenceLogps(logps.policy.bfloat16(), logps.reference.bfloat16()), 0.1)
    assert out.losses.dtype == torch.float32


# Config.


def test_paper_defaults():
    assert LossConfig.paper_defaults("dpo").beta == 0.01
    assert LossConfig.paper_defaults("ipo").tau == 0.01
    simpo = LossConfig.paper_defaults("simpo")
    assert (simpo.beta, simpo.gamma) == (10.0, 1.0)
    wrpo_dpo = LossConfig.paper_defaults("wrpo", "dpo")
    assert (wrpo_dpo.beta, wrpo_dpo.alpha, wrpo_dpo.schedule) == (0.01, 0.1, "dynamic")
    assert LossConfig.paper_defaults("wrpo", "ipo").tau == 0.01
    wrpo_simpo = LossConfig.paper_defaults("wrpo", "simpo")
    assert (wrpo_simpo.beta, wrpo_simpo.gamma, wrpo_simpo.alpha) == (10.0, 0.0, 0.5)
    assert LossConfig.paper_defaults("wrpo", "dpo", alpha=0.3).alpha == 0.3
    assert LossConfig() == wrpo_dpo


def test_config_validation():
    with pytest.raises(ValueError):
        LossConfig(objective="kto")
    with pytest.raises(ValueError):
        LossConfig(inner="orpo")
    with pytest.raises(ValueError):
        LossConfig(alpha=1.5)
    with pytest.raises(ValueError):
        LossConfig(beta=0.0)
    with pytest.raises(ValueError):
        LossConfig(label_smoothing=0.5)


def test_missing_inputs_and_wrong_layout_are_rejected():
    with pytest.raises(ValueError, match="reference"):
        wrpo_loss(LossConfig(), quad(reference=None), 0.1)
    with pytest.raises(ValueError, match="lengths"):
        wrpo_loss(wrpo_cfg("simpo"), quad(lengths=None), 0.1)
    with pytest.raises(ValueError, match="lengths"):
        log_ratios(wrpo_cfg("ipo"), quad(lengths=None))
    with pytest.raises(ValueError, match="shape"):
        pairwise_loss(LossConfig(objective="dpo"), quad())
    with pytest.raises(ValueError, match="shape"):
        wrpo_loss(LossConfig(), pair(quad(), 0), 0.1)
    with pytest.raises(ValueError):
        pairwise_loss(LossConfig(), pair(quad(), 0))

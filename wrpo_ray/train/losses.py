"""Preference-optimization losses: WRPO and the pairwise baselines DPO, IPO and SimPO.

Every objective works on per-sequence log-probabilities summed over response tokens (prompt tokens
excluded), laid out as a ``(batch, responses)`` tensor:

* WRPO: columns ``(y_ws, y_wt, y_l)``: source-preferred, target-preferred, dispreferred;
* pairwise objectives: columns ``(chosen, rejected)``.

Each objective scores a response with an implicit reward ``beta * r(y)`` where ``r`` depends on the
objective (see :func:`log_ratios`). WRPO replaces the chosen reward by
``alpha * reward(y_ws) + (1 - alpha) * reward(y_wt)`` and feeds the result to the inner objective, so
WRPO with ``alpha = 0`` is the inner objective on ``(y_wt, y_l)`` and with ``alpha = 1`` on ``(y_ws, y_l)``.

IPO has no ``beta``; its rewards are reported as ``tau * r(y)`` so that they sit on the same scale as
DPO's when ``tau == beta``. By default IPO log-ratios are averaged per response token, as in TRL's IPO;
``LossConfig.ipo_length_normalize=False`` uses summed log-ratios as written in the IPO and WRPO papers.
The default is the mean because Table 6's ``tau = 0.01`` was tuned with the official WRPO code, which runs
TRL's IPO; with summed log-ratios the same ``tau`` asks for a margin about |y| times smaller per token.

This module imports nothing from Ray so it can be tested and reused on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

Objective = Literal["wrpo", "dpo", "ipo", "simpo"]
InnerObjective = Literal["dpo", "ipo", "simpo"]
AlphaSchedule = Literal["dynamic", "static"]

# Table 6 of the WRPO paper (Target-SFT policy, LLaMA3-8B-Instruct).
PAPER_DEFAULTS: dict[str, dict[str, float]] = {
    "dpo": {"beta": 0.01},
    "ipo": {"tau": 0.01},
    "simpo": {"beta": 10.0, "gamma": 1.0},
    "wrpo-dpo": {"beta": 0.01, "alpha": 0.1},
    "wrpo-ipo": {"tau": 0.01, "alpha": 0.1},
    "wrpo-simpo": {"beta": 10.0, "gamma": 0.0, "alpha": 0.5},
}


@dataclass(frozen=True)
class LossConfig:
    """Which objective to optimise and its hyperparameters.

    ``gamma`` is SimPO's target reward margin, in reward units: the loss is
    ``-log sigmoid(reward(chosen) - reward(rejected) - gamma)`` (not SimPO's ``gamma / beta`` ratio).
    ``tau`` is IPO's regulariser: the squared loss pulls the log-ratio margin towards ``1 / (2 tau)``.
    ``alpha`` and ``schedule`` apply to WRPO only; ``label_smoothing`` to the sigmoid objectives
    (DPO, SimPO).
    """

    objective: Objective = "wrpo"
    inner: InnerObjective = "dpo"
    beta: float = 0.01
    gamma: float = 0.0
    tau: float = 0.01
    alpha: float = 0.1
    schedule: AlphaSchedule = "dynamic"
    label_smoothing: float = 0.0
    ipo_length_normalize: bool = True

    def __post_init__(self) -> None:
        _check_choice("objective", self.objective, Objective)
        _check_choice("inner", self.inner, InnerObjective)
        _check_choice("schedule", self.schedule, AlphaSchedule)
        if self.beta <= 0 or self.tau <= 0:
            raise ValueError(f"beta and tau must be positive, got beta={self.beta}, tau={self.tau}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    @property
    def kind(self) -> InnerObjective:
        """The objective that turns rewards into a loss: the inner one for WRPO."""
        return self.inner if self.objective == "wrpo" else self.objective

    @property
    def name(self) -> str:
        """``dpo``, ``ipo``, ``simpo`` or ``wrpo-<inner>``, the keys of :data:`PAPER_DEFAULTS`."""
        return f"wrpo-{self.inner}" if self.objective == "wrpo" else self.objective

    @property
    def n_responses(self) -> int:
        return 3 if self.objective == "wrpo" else 2

    @property
    def needs_reference(self) -> bool:
        return self.kind != "simpo"

    @classmethod
    def paper_defaults(
        cls, objective: Objective = "wrpo", inner: InnerObjective = "dpo", **overrides: Any
    ) -> LossConfig:
        """The paper's Table 6 hyperparameters for an objective, with ``overrides`` applied on top."""
        base = cls(objective=objective, inner=inner)
        return dataclasses.replace(base, **{**PAPER_DEFAULTS[base.name], **overrides})


class PreferenceLogps(NamedTuple):
    """Per-sequence summed log-probs of a batch, each of shape ``(batch, responses)``.

    ``reference`` is required by DPO and IPO, ``lengths`` (response token counts) by SimPO and by IPO
    with length normalisation. Lengths below one are treated as one.
    """

    policy: Tensor
    reference: Tensor | None = None
    lengths: Tensor | None = None


class LossOutput(NamedTuple):
    """Per-example losses of shape ``(batch,)`` and batch-mean metrics as detached 0-dim tensors."""

    losses: Tensor
    metrics: dict[str, Tensor]


def alpha_at(step: int, total_steps: int, final_alpha: float, schedule: AlphaSchedule = "dynamic") -> float:
    """WRPO fusion coefficient at optimizer step ``step`` (0-based) of a run of ``total_steps`` steps.

    ``dynamic`` rises linearly from 0 at step 0 to ``final_alpha`` at the last step
    (``total_steps - 1``) and stays there; a one-step run uses ``final_alpha``. ``static`` is
    ``final_alpha`` throughout.
    """
    _check_choice("schedule", schedule, AlphaSchedule)
    if total_steps < 1 or step < 0:
        raise ValueError(f"need total_steps >= 1 and step >= 0, got step={step}, total_steps={total_steps}")
    if schedule == "static" or total_steps == 1:
        return final_alpha
    return final_alpha * min(step, total_steps - 1) / (total_steps - 1)


def log_ratios(cfg: LossConfig, logps: PreferenceLogps) -> Tensor:
    """``r(y)`` for every response, before scaling by ``beta`` (or ``tau``).

    DPO: ``log pi(y|x) - log pi_ref(y|x)``. IPO: the same, divided by ``|y|`` when length-normalised.
    SimPO (reference-free): ``log pi(y|x) / |y|``. Reference log-probs never receive gradients.
    """
    policy = _as_float(logps.policy)
    kind = cfg.kind
    if kind != "simpo":
        if logps.reference is None:
            raise ValueError(f"{cfg.name} needs reference log-probs")
        _check_shape("reference", logps.reference, policy)
        policy = policy - _as_float(logps.reference).detach()
    if kind == "simpo" or (kind == "ipo" and cfg.ipo_length_normalize):
        if logps.lengths is None:
            raise ValueError(f"{cfg.name} needs response lengths")
        _check_shape("lengths", logps.lengths, policy)
        policy = policy / logps.lengths.detach().to(policy.dtype).clamp_min(1.0)
    return policy


def preference_losses(cfg: LossConfig, chosen: Tensor, rejected: Tensor) -> Tensor:
    """Per-example loss of the objective ``cfg.kind`` from the ``log_ratios`` of chosen and rejected."""
    margin = chosen - rejected
    if cfg.kind == "ipo":
        return (margin - 1.0 / (2.0 * cfg.tau)) ** 2
    logits = cfg.beta * margin
    if cfg.kind == "simpo":
        logits = logits - cfg.gamma
    eps = cfg.label_smoothing
    return -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


def pairwise_loss(cfg: LossConfig, logps: PreferenceLogps) -> LossOutput:
    """DPO, IPO or SimPO on ``(chosen, rejected)`` columns."""
    if cfg.objective == "wrpo":
        raise ValueError("pairwise_loss takes a dpo, ipo or simpo config; use wrpo_loss for wrpo")
    r = log_ratios(cfg, _checked(logps, 2))
    losses = preference_losses(cfg, r[:, 0], r[:, 1])
    rewards = (_reward_scale(cfg) * r).detach()
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    policy = logps.policy.detach()
    metrics = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "logps/chosen": policy[:, 0].mean(),
        "logps/rejected": policy[:, 1].mean(),
    }
    return LossOutput(losses, metrics)


def wrpo_loss(cfg: LossConfig, logps: PreferenceLogps, alpha: float) -> LossOutput:
    """WRPO with inner objective ``cfg.inner`` on ``(y_ws, y_wt, y_l)`` columns, at fusion weight ``alpha``."""
    if cfg.objective != "wrpo":
        raise ValueError(f"wrpo_loss takes a wrpo config, got objective={cfg.objective!r}")
    r = log_ratios(cfg, _checked(logps, 3))
    weighted = alpha * r[:, 0] + (1.0 - alpha) * r[:, 1]
    losses = preference_losses(cfg, weighted, r[:, 2])
    rewards = (_reward_scale(cfg) * r).detach()
    source, target, rejected = rewards.unbind(dim=1)
    chosen = alpha * source + (1.0 - alpha) * target
    policy = logps.policy.detach()
    metrics = {
        "alpha": torch.tensor(float(alpha), device=policy.device),
        "rewards/source": source.mean(),
        "rewards/target": target.mean(),
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "rewards/source_accuracies": (source > rejected).float().mean(),
        "rewards/target_accuracies": (target > rejected).float().mean(),
        "logps/source": policy[:, 0].mean(),
        "logps/target": policy[:, 1].mean(),
        "logps/rejected": policy[:, 2].mean(),
    }
    return LossOutput(losses, metrics)


def compute_loss(cfg: LossConfig, logps: PreferenceLogps, step: int, total_steps: int) -> LossOutput:
    """The training loop's entry point: the loss of ``cfg`` at optimizer step ``step`` of ``total_steps``."""
    if cfg.objective == "wrpo":
        return wrpo_loss(cfg, logps, alpha_at(step, total_steps, cfg.alpha, cfg.schedule))
    return pairwise_loss(cfg, logps)


def _reward_scale(cfg: LossConfig) -> float:
    return cfg.tau if cfg.kind == "ipo" else cfg.beta


def _as_float(x: Tensor) -> Tensor:
    """Upcast half-precision inputs: sigmoid and squared losses on bf16 log-probs lose the margin."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _checked(logps: PreferenceLogps, n_responses: int) -> PreferenceLogps:
    if logps.policy.dim() != 2 or logps.policy.shape[1] != n_responses:
        raise ValueError(
            f"expected policy log-probs of shape (batch, {n_responses}), got {tuple(logps.policy.shape)}"
        )
    return logps


def _check_shape(name: str, x: Tensor, like: Tensor) -> None:
    if x.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, policy log-probs {tuple(like.shape)}")


def _check_choice(name: str, value: str, choices: Any) -> None:
    if value not in get_args(choices):
        raise ValueError(f"{name} must be one of {get_args(choices)}, got {value!r}")

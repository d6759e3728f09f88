"""A planner: each sample picks its own next timestep from how much its x̂0 moved (an adaptive step size).

The controller follows adaptive ODE solvers (Hairer, Nørsett & Wanner, "Solving Ordinary Differential Equations I",
§II.4): estimate the local error of the step just taken, accept it if the error is within the tolerance, otherwise
reject it and retry from the same point with a smaller step; either way scale the next step by
safety · (tolerance / error)^(1/2), the exponent of a first-order method.

The error estimate is the one embedded in DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095): in log-SNR time
λ = log(α/σ), DDIM (η = 0) is the first-order exponential integrator, and the second-order term it leaves out, with
x̂0 linear in λ over the step, is α_t · φ(h) · (x̂0(t) − x̂0(s)) with φ(h) = (h − 1 + e^(−h)) / h ≈ h / 2. It costs no
extra network call: x̂0(t) is the evaluation the next step needs anyway. Both planners here have a step size in λ
that a steering monitor (`MonitorDecision.step_factor`) can scale.
"""

from __future__ import annotations

import math
import re

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.planner import StepDecision, StepObservation


class StepSizeControl(BaseModel):
    """Step-size control on x̂0 in log-SNR time (see the module docstring); `tolerance` is the accepted local error
    per step, as the root-mean-square over pixels in the model's data units."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tolerance: float = Field(gt=0)
    initial_step: float = Field(1.0, gt=0, description="first step in λ = log(α/σ)")
    safety: float = Field(0.9, gt=0, le=1)
    min_factor: float = Field(0.2, gt=0, lt=1)
    max_factor: float = Field(4.0, gt=1)

    @model_validator(mode="after")
    def _factors_bracket_one(self) -> StepSizeControl:
        if self.safety < self.min_factor:
            raise ValueError(f"safety: {self.safety} is below min_factor {self.min_factor}; it must not be")
        return self

    @property
    def name(self) -> str:
        return f"adaptive:{self.tolerance:g}"

    def start(self, rows: int, schedule: NoiseSchedule, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.full((rows,), schedule.num_train_timesteps - 1, dtype=torch.int64, device=device)
        return t, torch.zeros(rows, dtype=torch.float64, device=device)

    def decide(self, observation: StepObservation, schedule: NoiseSchedule) -> StepDecision:
        lam = schedule.log_snr(observation.t.device)
        t = observation.t
        if observation.t_from is None or observation.x0_from is None:
            # the first evaluation (t = T-1) ends no step: accept it and take the initial step
            step = torch.full(t.shape, self.initial_step, dtype=torch.float64, device=t.device)
            return StepDecision(torch.ones_like(t, dtype=torch.bool), _timestep_at(lam, lam[t] + step, t), step,
                                torch.zeros_like(step))
        t_from = observation.t_from
        h = lam[t] - lam[t_from]
        phi = torch.where(h > 1e-6, (h + torch.expm1(-h)) / h.clamp(min=1e-6), h / 2)  # (h - 1 + e^-h) / h
        change = (observation.x0 - observation.x0_from).double().flatten(1).pow(2).mean(1).sqrt()
        error = schedule.alpha_bar(t).double().sqrt() * phi * change
        # the smallest possible step (one training timestep) is accepted whatever its error: progress is guaranteed
        accept = (error <= self.tolerance) | (t == t_from - 1)
        ratio = (self.tolerance / error.clamp(min=1e-300)).sqrt()
        factor = (self.safety * ratio).clamp(self.min_factor, self.max_factor)
        step = h * factor
        start = torch.where(accept, t, t_from)
        # a row accepted at t = 0 is finished: its last step goes to -1 and returns x̂0
        t_next = torch.where(accept & (t == 0), -1, _timestep_at(lam, lam[start] + step, start))
        return StepDecision(accept, t_next, step, error)

    def steer(self, observation: StepObservation, decision: StepDecision, factor: torch.Tensor,
              schedule: NoiseSchedule) -> StepDecision:
        """A monitor's factor multiplies the next step (in λ) of accepted rows that go on; the rest keep theirs."""
        lam = schedule.log_snr(observation.t.device)
        step = decision.memory
        assert isinstance(step, torch.Tensor)  # noqa: S101 - the controller's own memory
        factor = factor.to(step.dtype)
        apply = decision.accept & (decision.t_next >= 0) & (factor != 1)
        start = observation.t if observation.t_from is None else \
            torch.where(decision.accept, observation.t, observation.t_from)
        steered = torch.where(apply, step * factor, step)
        t_next = torch.where(apply, _timestep_at(lam, lam[start] + steered, start), decision.t_next)
        return StepDecision(decision.accept, t_next, steered, decision.error)


class SteeredPlan(BaseModel):
    """A planner whose step in λ only a steering monitor changes (Monitor.steers, e.g. `SteeringChange`).

    Every row starts at T-1 with the step that splits [λ(T-1), λ(0)] into `steps` equal parts (without a monitor
    it walks a uniform-in-λ list of about `steps` steps, ending at 0) and accepts every step. A monitor's
    `step_factor` multiplies the row's step, kept within [min_scale, max_scale] times the initial one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(gt=0, description="the initial step is 1/steps of the λ range")
    min_scale: float = Field(1 / 16, gt=0, le=1)
    max_scale: float = Field(16.0, ge=1)

    @property
    def name(self) -> str:
        return f"steered:{self.steps}"

    def _initial(self, lam: torch.Tensor) -> torch.Tensor:
        return (lam[0] - lam[-1]).double() / self.steps

    def start(self, rows: int, schedule: NoiseSchedule, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.full((rows,), schedule.num_train_timesteps - 1, dtype=torch.int64, device=device)
        return t, self._initial(schedule.log_snr(device)).expand(rows).clone()

    def decide(self, observation: StepObservation, schedule: NoiseSchedule) -> StepDecision:
        lam = schedule.log_snr(observation.t.device)
        t, step = observation.t, observation.memory
        assert isinstance(step, torch.Tensor)  # noqa: S101
        t_next = torch.where(t == 0, -1, _timestep_at(lam, lam[t] + step, t))
        return StepDecision(torch.ones_like(t, dtype=torch.bool), t_next, step, torch.zeros_like(step))

    def steer(self, observation: StepObservation, decision: StepDecision, factor: torch.Tensor,
              schedule: NoiseSchedule) -> StepDecision:
        """The row's step times `factor` (clipped to the scale bounds) for rows that go on."""
        lam = schedule.log_snr(observation.t.device)
        step = decision.memory
        assert isinstance(step, torch.Tensor)  # noqa: S101
        initial = self._initial(lam)
        apply = (decision.t_next >= 0) & (factor != 1)
        steered = torch.where(apply, (step * factor.to(step.dtype)).clamp(initial * self.min_scale,
                                                                          initial * self.max_scale), step)
        t = observation.t
        t_next = torch.where(apply, _timestep_at(lam, lam[t] + steered, t), decision.t_next)
        return StepDecision(decision.accept, t_next, steered, decision.error)


def _timestep_at(lam: torch.Tensor, target: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
    """The smallest timestep whose λ does not pass `target`, kept in [0, below - 1].

    Rounding towards the start keeps a step no longer than asked, so a retry after a rejection (a smaller target)
    always lands strictly closer to its start: the retries end at the one-timestep step, which is accepted."""
    ascending = lam.flip(0)  # index j is timestep T-1-j
    index = torch.searchsorted(ascending, target.to(ascending.dtype).contiguous(), right=True) - 1
    return torch.minimum(len(lam) - 1 - index, below - 1).clamp(min=0)


_STEERED_RULE = "write steered:N with N a whole number of steps, at least 1, e.g. steered:20"


def parse_dynamic_policy(name: str) -> StepSizeControl | SteeredPlan:
    """`adaptive:TOLERANCE` (e.g. `adaptive:0.002`) -> StepSizeControl, `steered:N` -> SteeredPlan(steps=N); errors
    name the policy field. N's upper bound, the model's timesteps, is `check_steered`'s."""
    if name.startswith("steered"):
        return _parse_steered(name)
    if not name.startswith("adaptive:"):
        raise FieldError("policy", name, "is not a dynamic policy; write adaptive:TOLERANCE, e.g. adaptive:0.002")
    text = name.split(":", 1)[1]
    try:
        tolerance = float(text)
    except ValueError:
        raise FieldError("policy", name, f"has tolerance {text!r}, which is not a number") from None
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise FieldError("policy", name, f"has tolerance {tolerance}; it must be a positive finite number")
    return StepSizeControl(tolerance=tolerance)


def _parse_steered(policy: str) -> SteeredPlan:
    name, colon, text = policy.partition(":")
    if name != "steered" or not colon:
        raise FieldError("policy", policy, f"is not a steered policy; {_STEERED_RULE}")
    if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
        raise FieldError("policy", policy, f"has N = {text!r}, which is not a whole number; {_STEERED_RULE}")
    steps = int(text)
    if steps < 1:
        raise FieldError("policy", policy, f"has N = {steps}; {_STEERED_RULE}")
    return SteeredPlan(steps=steps)


def check_steered(plan: SteeredPlan, policy: str, timesteps: int) -> None:
    """FieldError("policy") if `steered:N` asks for more steps than the model has timesteps."""
    if plan.steps > timesteps:
        raise FieldError("policy", policy, f"has N = {plan.steps}, above the model's {timesteps} training timesteps; "
                                           f"{_STEERED_RULE.replace('at least 1', f'from 1 to {timesteps}')}")

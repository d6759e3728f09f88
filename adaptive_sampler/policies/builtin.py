"""The built-in static step-allocation policies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.policies.base import require_num_steps
from adaptive_sampler.timesteps import discretize, validate_timesteps


@dataclass(frozen=True)
class Uniform:
    """Evenly spaced over [0, T-1], both ends included: diffusers' `timestep_spacing="linspace"`."""

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        n, T = require_num_steps(num_steps, schedule, "uniform"), schedule.num_train_timesteps
        return torch.from_numpy(np.linspace(0, T - 1, n).round()[::-1].astype(np.int64).copy())


@dataclass(frozen=True)
class Leading:
    """Multiples of T // N from 0, plus `steps_offset`: diffusers' `timestep_spacing="leading"` (DDIM paper)."""

    steps_offset: int = 0

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        n, T = require_num_steps(num_steps, schedule, "leading"), schedule.num_train_timesteps
        t = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + self.steps_offset
        return validate_timesteps(t.tolist(), T)


@dataclass(frozen=True)
class Trailing:
    """Counted down from T - 1 in strides of T / N: diffusers' `timestep_spacing="trailing"` (Lin et al. 2024)."""

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        n, T = require_num_steps(num_steps, schedule, "trailing"), schedule.num_train_timesteps
        # T - i·T/N, not np.arange(T, 0, -T/N) as diffusers: its float stop lets an (N+1)-th entry, -1, through
        # for some N (61, 103, …); where diffusers' list is valid the two agree
        return torch.from_numpy(np.round(T - np.arange(n) * T / n).astype(np.int64) - 1)


@dataclass(frozen=True)
class Quadratic:
    """τ_i = (i · sqrt(0.8 T) / (N-1))², the DDIM paper's quadratic sequence (Song et al. 2021, Appendix D.2)."""

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        n, T = require_num_steps(num_steps, schedule, "quadratic"), schedule.num_train_timesteps
        points = np.floor(np.linspace(0, np.sqrt(T * 0.8), n) ** 2)[::-1]
        return discretize(points, T)


def _interp_timestep(values: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Real timesteps where a curve over t = 0…T-1 (increasing in t) takes `values`."""
    return np.interp(values, curve, np.arange(len(curve), dtype=np.float64))


@dataclass(frozen=True)
class Karras:
    """σ_i = (σ_max^(1/ρ) + i/(N-1)·(σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ (Karras et al. 2022, eq. 5), with σ_min and σ_max
    of the model's own schedule, mapped to timesteps by interpolating log σ."""

    rho: float = 7.0

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        n = require_num_steps(num_steps, schedule, "karras")
        if self.rho <= 0:
            raise FieldError("rho", self.rho, "must be positive")
        sigmas = schedule.sigmas().numpy()
        ramp = np.linspace(0, 1, n)
        lo, hi = sigmas[0] ** (1 / self.rho), sigmas[-1] ** (1 / self.rho)
        wanted = (hi + ramp * (lo - hi)) ** self.rho
        return discretize(_interp_timestep(np.log(wanted), np.log(sigmas)), schedule.num_train_timesteps)


@dataclass(frozen=True)
class LogSNR:
    """Uniform in log-SNR λ = log(ᾱ / (1 - ᾱ)) between the schedule's ends (the spacing DPM-Solver uses)."""

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        n = require_num_steps(num_steps, schedule, "logsnr")
        neg_lambda = -schedule.log_snr().numpy()  # increasing in t
        wanted = np.linspace(neg_lambda[-1], neg_lambda[0], n)
        return discretize(_interp_timestep(wanted, neg_lambda), schedule.num_train_timesteps)


@dataclass(frozen=True)
class FrontLoaded:
    """More steps at high noise, where coarse structure forms: step density over u = t/(T-1) is
    1 + strength·u^power, and the N timesteps sit at equal quantiles of that density (both ends included)."""

    strength: float = 3.0
    power: float = 2.0

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        n, T = require_num_steps(num_steps, schedule, "front-loaded"), schedule.num_train_timesteps
        if self.strength < 0:
            raise FieldError("strength", self.strength, "is negative; it must be >= 0")
        if self.power <= 0:
            raise FieldError("power", self.power, "must be positive")
        u = np.linspace(0, 1, 4096)
        cdf = u + self.strength * u ** (self.power + 1) / (self.power + 1)
        u_points = np.interp(np.linspace(cdf[-1], 0, n), cdf, u)
        return discretize(u_points * (T - 1), T)


@dataclass(frozen=True)
class Explicit:
    """A user's own list, validated; its length is the step count."""

    values: Sequence[int | float]

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        t = validate_timesteps(self.values, schedule.num_train_timesteps)
        if num_steps is not None and num_steps != len(t):
            raise FieldError("num_steps", num_steps, f"differs from the {len(t)} timesteps of the explicit list")
        return t

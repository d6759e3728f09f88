"""Search spaces over timestep lists: Optuna parameters -> a valid, strictly descending list inside [0, T-1].

Every space decodes through `discretize`, so whatever the sampler suggests is a valid list of exactly N timesteps.
The free space places both ends freely; the families start at T-1 (pure noise) and free the bottom through `t_min`.
A space also encodes a given list (exactly, or as the nearest family member): so warm starts enter a study.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import optuna
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.timesteps import discretize, validate_timesteps


@dataclass(frozen=True)
class Parameter:
    """One float parameter of a space: its bounds, whether it is sampled on a log scale, and its grid for
    encoding (values tried when fitting a family member to a given list)."""

    low: float
    high: float
    log: bool = False
    grid: tuple[float, ...] = ()


@runtime_checkable
class SearchSpace(Protocol):
    """A parameterisation of N-step timestep lists."""

    @property
    def name(self) -> str: ...

    def parameters(self, num_steps: int) -> dict[str, Parameter]:
        """The parameters of an N-step list, by name (without prefix)."""

    def decode(self, params: Mapping[str, float], num_steps: int, schedule: NoiseSchedule) -> torch.Tensor:
        """The N-step list the parameters stand for (strictly descending, top at T-1)."""

    def encode(self, timesteps: torch.Tensor, schedule: NoiseSchedule) -> dict[str, float]:
        """Parameters whose decoded list is `timesteps` (free space) or closest to it (families)."""


def _check_steps(num_steps: int, schedule: NoiseSchedule) -> None:
    if not 1 <= num_steps <= schedule.num_train_timesteps:
        raise FieldError("steps", num_steps, f"is outside [1, {schedule.num_train_timesteps}] (the training timesteps)")


def _ramp(num_steps: int) -> np.ndarray:
    """i / (N-1) for i = 0…N-1 (0 at the top of the list); [0] for N = 1."""
    return np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1)


FREE_LOW = 1e-4


@dataclass(frozen=True)
class FreeSpace:
    """Positive increments normalised onto [0, T-1]: the N steps' gaps d_0 … d_{N-1} counted from the bottom, plus
    the gap d_N between the top timestep and T-1, each log-uniform on [1e-4, 1].

    The k-th timestep from the bottom sits at (T-1)·(d_0 + … + d_k)/Σd. A gap at its lower bound rounds away, so
    both ends can reach 0 and T-1 and every valid N-step list is encoded exactly (quadratic, below T-1, included).
    """

    name: str = "free"

    def parameters(self, num_steps: int) -> dict[str, Parameter]:
        return {f"d{k}": Parameter(FREE_LOW, 1.0, log=True) for k in range(num_steps + 1)}

    def decode(self, params: Mapping[str, float], num_steps: int, schedule: NoiseSchedule) -> torch.Tensor:
        _check_steps(num_steps, schedule)
        d = np.array([params[f"d{k}"] for k in range(num_steps + 1)], dtype=np.float64)
        positions = np.cumsum(d)[:num_steps] / d.sum()
        return discretize((schedule.num_train_timesteps - 1) * positions[::-1], schedule.num_train_timesteps)

    def encode(self, timesteps: torch.Tensor, schedule: NoiseSchedule) -> dict[str, float]:
        top = schedule.num_train_timesteps - 1
        ascending = validate_timesteps(timesteps, schedule.num_train_timesteps).double().numpy()[::-1]
        gaps = np.diff(np.concatenate([[0.0], ascending, [float(top)]]))
        d = np.clip(gaps / gaps.max(), FREE_LOW, 1.0) if gaps.max() > 0 else np.ones_like(gaps)
        return {f"d{k}": float(v) for k, v in enumerate(d)}


_T_MIN = Parameter(0.0, 0.2, grid=(0.0, 0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2))


class _Family:
    """A low-dimensional family: encodes a list as its grid point whose list is closest in mean |Δ log(1 + t)|."""

    def encode(self: SearchSpace, timesteps: torch.Tensor, schedule: NoiseSchedule) -> dict[str, float]:
        n = len(timesteps)
        params = self.parameters(n)
        target = np.log1p(timesteps.double().numpy())
        best, best_distance = {}, np.inf
        for values in itertools.product(*(p.grid for p in params.values())):
            candidate = dict(zip(params, values, strict=True))
            distance = float(np.abs(np.log1p(self.decode(candidate, n, schedule).double().numpy()) - target).mean())
            if distance < best_distance:
                best, best_distance = candidate, distance
        return best


def _log_grid(low: float, high: float, anchors: Sequence[float], points: int = 13) -> tuple[float, ...]:
    return tuple(sorted({*np.geomspace(low, high, points).round(6).tolist(), *anchors}))


@dataclass(frozen=True)
class PowerSpace(_Family):
    """t_i = t_min + (T-1-t_min)·(1 - i/(N-1))^p: p = 1 is uniform, p = 2 the DDIM paper's quadratic shape.

    Parameters: `power` p ∈ [0.5, 4] (log scale) and `t_min` as a fraction of T-1 in [0, 0.2].
    """

    name: str = "power"

    def parameters(self, num_steps: int) -> dict[str, Parameter]:
        return {"power": Parameter(0.5, 4.0, log=True, grid=_log_grid(0.5, 4.0, (1.0, 2.0, 3.0))), "t_min": _T_MIN}

    def decode(self, params: Mapping[str, float], num_steps: int, schedule: NoiseSchedule) -> torch.Tensor:
        _check_steps(num_steps, schedule)
        top = schedule.num_train_timesteps - 1
        t_min = params["t_min"] * top
        points = t_min + (top - t_min) * (1.0 - _ramp(num_steps)) ** params["power"]
        return discretize(points, schedule.num_train_timesteps)



@dataclass(frozen=True)
class KarrasSpace(_Family):
    """σ_i = (σ_max^(1/ρ) + i/(N-1)·(σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ (Karras et al. 2022, eq. 5), σ_max = σ(T-1),
    σ_min = σ(t_min), mapped to timesteps by interpolating log σ; ρ = 7 and t_min = 0 is the `karras` policy.

    Parameters: `rho` ∈ [1, 20] (log scale) and `t_min` as a fraction of T-1 in [0, 0.2].
    """

    name: str = "karras"

    def parameters(self, num_steps: int) -> dict[str, Parameter]:
        return {"rho": Parameter(1.0, 20.0, log=True, grid=_log_grid(1.0, 20.0, (7.0,))), "t_min": _T_MIN}

    def decode(self, params: Mapping[str, float], num_steps: int, schedule: NoiseSchedule) -> torch.Tensor:
        _check_steps(num_steps, schedule)
        T = schedule.num_train_timesteps
        log_sigmas = np.log(schedule.sigmas().numpy())  # increasing in t
        rho = params["rho"]
        sigma_min = np.exp(np.interp(params["t_min"] * (T - 1), np.arange(T), log_sigmas))
        hi, lo = np.exp(log_sigmas[-1]) ** (1 / rho), sigma_min ** (1 / rho)
        wanted = (hi + _ramp(num_steps) * (lo - hi)) ** rho
        return discretize(np.interp(np.log(wanted), log_sigmas, np.arange(T, dtype=np.float64)), T)



@dataclass(frozen=True)
class LogSNRSpace(_Family):
    """A warp of the log-SNR spacing: -λ_i = -λ(T-1) + (i/(N-1))^w·(λ(T-1) - λ(t_min)); w = 1 and t_min = 0 is
    the `logsnr` policy (uniform in λ, as DPM-Solver spaces its steps), w > 1 puts more steps at high noise.

    Parameters: `warp` w ∈ [0.25, 4] (log scale) and `t_min` as a fraction of T-1 in [0, 0.2].
    """

    name: str = "logsnr"

    def parameters(self, num_steps: int) -> dict[str, Parameter]:
        return {"warp": Parameter(0.25, 4.0, log=True, grid=_log_grid(0.25, 4.0, (1.0,))), "t_min": _T_MIN}

    def decode(self, params: Mapping[str, float], num_steps: int, schedule: NoiseSchedule) -> torch.Tensor:
        _check_steps(num_steps, schedule)
        T = schedule.num_train_timesteps
        neg_lambda = -schedule.log_snr().numpy()  # increasing in t
        grid = np.arange(T, dtype=np.float64)
        low = np.interp(params["t_min"] * (T - 1), grid, neg_lambda)
        wanted = neg_lambda[-1] + _ramp(num_steps) ** params["warp"] * (low - neg_lambda[-1])
        return discretize(np.interp(wanted, neg_lambda, grid), T)



SPACES: dict[str, type] = {"free": FreeSpace, "power": PowerSpace, "karras": KarrasSpace, "logsnr": LogSNRSpace}


def make_space(name: str) -> SearchSpace:
    """The search space called `name` (see SPACES)."""
    if name not in SPACES:
        raise FieldError("space", name, f"is not one of {', '.join(SPACES)}")
    space: SearchSpace = SPACES[name]()
    return space


def suggest_timesteps(
    trial: optuna.Trial, space: SearchSpace, num_steps: int, schedule: NoiseSchedule, prefix: str = ""
) -> torch.Tensor:
    """Ask the trial for the space's parameters (named `prefix + name`) and decode them into a valid list."""
    params = {
        name: trial.suggest_float(prefix + name, p.low, p.high, log=p.log)
        for name, p in space.parameters(num_steps).items()
    }
    return space.decode(params, num_steps, schedule)


def encode_params(space: SearchSpace, timesteps: torch.Tensor, schedule: NoiseSchedule,
                  prefix: str = "") -> dict[str, float]:
    """`space.encode` with the trial parameter names (`prefix + name`), for `Study.enqueue_trial`."""
    return {prefix + name: value for name, value in space.encode(timesteps, schedule).items()}


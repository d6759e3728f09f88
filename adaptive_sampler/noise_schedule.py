"""ᾱ_t of a diffusion model, taken from any diffusers scheduler config through diffusers' own beta code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DDPMScheduler

# the config keys that define the β schedule (all others are ignored)
BETA_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
             "rescale_betas_zero_snr")

@dataclass(frozen=True)
class NoiseSchedule:
    """Cumulative signal levels ᾱ_t for the training timesteps t = 0 … T-1 (float32, as diffusers keeps them).

    Timestep -1 stands for the clean end of the chain, ᾱ = 1 (diffusers' `set_alpha_to_one=True`).
    """

    alphas_cumprod: torch.Tensor
    # the tables copied to each device they were asked on: a copy per sampling step would wait for the GPU
    _on_device: dict[tuple[str, torch.device], torch.Tensor] = field(default_factory=dict, compare=False,
                                                                     repr=False)

    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._on_device:
            table = self.alphas_cumprod if name == "alpha_bar" else self.log_snr()
            self._on_device[key] = table.to(device)
        return self._on_device[key]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """Build from a diffusers scheduler config; diffusers computes the betas, so the table matches its
        schedulers exactly.

        Args:
            config: `num_train_timesteps`, the β schedule (`linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`,
                or `trained_betas`) and `rescale_betas_zero_snr`; other keys are ignored.
        """
        ddpm = DDPMScheduler(**{k: config[k] for k in BETA_KEYS if k in config})
        alphas_cumprod = ddpm.alphas_cumprod.clone()
        if config.get("rescale_betas_zero_snr", False):
            # ᾱ_{T-1} is exactly 0 under zero-terminal-SNR; diffusers' DDIM uses 2**-24 there to keep ε-models finite
            alphas_cumprod[-1] = 2**-24
        return cls(alphas_cumprod)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        """ᾱ at `timesteps` of any shape (float32); -1 (any negative t) maps to 1.

        Integer timesteps read the table. Fractional ones (a floating tensor) interpolate linearly in log-SNR between
        the two neighbouring training steps, the parameterisation in which solvers such as DPM-Solver step; a
        floating t that is a whole number reads the table exactly as its integer does.
        """
        device = timesteps.device
        table = self._table("alpha_bar", device)
        if not timesteps.is_floating_point():
            return torch.where(timesteps >= 0, table[timesteps.clamp(min=0)], torch.ones((), device=device))
        t = timesteps.double().clamp(0, self.num_train_timesteps - 1)
        nearest = t.round().long()
        between = torch.sigmoid(self.log_snr_at(t)).float()
        if timesteps.requires_grad:  # the table has no gradient in t: a learned list stays on the interpolation
            return torch.where(timesteps >= 0, between, torch.ones((), device=device))
        exact = torch.where(t == nearest, table[nearest], between)
        return torch.where(timesteps >= 0, exact, torch.ones((), device=device))

    def log_snr_at(self, timesteps: torch.Tensor) -> torch.Tensor:
        """λ_t (float64) at integer or fractional timesteps in [0, T-1], interpolated as in `alpha_bar`."""
        if not timesteps.is_floating_point():
            return self.log_snr(timesteps.device)[timesteps]
        t = timesteps.double()
        low = t.floor().long().clamp(0, max(self.num_train_timesteps - 2, 0))  # t = T-1 interpolates to weight 1
        lam = self.log_snr(timesteps.device)
        return torch.lerp(lam[low], lam[(low + 1).clamp(max=self.num_train_timesteps - 1)], t - low)

    def sigma_at(self, timesteps: torch.Tensor) -> torch.Tensor:
        """σ_t (float64) at integer or fractional timesteps in [0, T-1]: an integer t reads `sigmas()`; a floating one
        is e^{-λ/2}, λ interpolated in log-SNR (`log_snr_at`) as the sampler interpolates ᾱ."""
        if not timesteps.is_floating_point():
            return self.sigmas().to(timesteps.device)[timesteps]
        return (-self.log_snr_at(timesteps) / 2).exp()

    def sigmas(self) -> torch.Tensor:
        """σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) in float64, the noise level of σ-parameterised samplers (Karras et al. 2022)."""
        a = self.alphas_cumprod.double()
        return ((1 - a) / a).sqrt()

    def log_snr(self, device: torch.device | None = None) -> torch.Tensor:
        """λ_t = log(ᾱ_t / (1 - ᾱ_t)) in float64 (on `device`, cached, if given)."""
        if device is not None:
            return self._table("log_snr", device)
        a = self.alphas_cumprod.double()
        return (a / (1 - a)).log()

"""Turn a denoising network (diffusers UNet or any callable) into ε̂ and x̂0 at given timesteps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


def eps_and_x0(output: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε̂, x̂0) from a network `output` at x_t = sqrt(ᾱ)·x0 + sqrt(1 - ᾱ)·ε (ᾱ broadcast against x), for ε-, v-
    (Salimans & Ho 2022) or x0-prediction; x̂0 is not clipped here."""
    if prediction_type == "epsilon":
        return output, (x - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return (alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x,
                alpha_bar.sqrt() * x - (1 - alpha_bar).sqrt() * output)
    if prediction_type == "sample":
        return (x - alpha_bar.sqrt() * output) / (1 - alpha_bar).sqrt(), output
    raise FieldError("prediction_type", prediction_type, f"is not one of {', '.join(map(repr, PREDICTION_TYPES))}")


class X0Processing(BaseModel):
    """Optional clipping or dynamic thresholding of x̂0, with diffusers' names and meaning.

    Dynamic thresholding follows Saharia et al. 2022 (Imagen, arXiv:2205.11487): per sample, s is the
    `dynamic_thresholding_ratio` quantile of |x̂0|, clamped to [1, sample_max_value]; x̂0 is clipped to [-s, s] / s.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    clip_sample: bool = False
    clip_sample_range: float = Field(1.0, gt=0)
    thresholding: bool = False
    dynamic_thresholding_ratio: float = Field(0.995, gt=0, lt=1)
    sample_max_value: float = Field(1.0, ge=1)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> X0Processing:
        return cls(**{k: config[k] for k in cls.model_fields if k in config})

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        if self.thresholding:
            flat = x0.reshape(x0.shape[0], -1)
            s = torch.quantile(flat.abs().float(), self.dynamic_thresholding_ratio, dim=1)
            s = s.clamp(min=1, max=self.sample_max_value).to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
            return x0.clamp(-s, s) / s
        if self.clip_sample:
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0


@dataclass(frozen=True)
class Conditioning:
    """Extra network inputs per sample (e.g. `encoder_hidden_states` [n or 1, L, D]) and classifier-free guidance.

    With `uncond` set and guidance_scale ≠ 1, the network runs on unconditional and conditional rows and the output
    is uncond + guidance_scale · (cond - uncond) (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").
    """

    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    uncond: dict[str, torch.Tensor] | None = None
    guidance_scale: float = 1.0

    def select(self, indices: torch.Tensor) -> Conditioning:
        """The rows of `indices` (tensors with a single row broadcast to all samples)."""

        def take(kwargs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: (v.expand(len(indices), *v.shape[1:]) if v.shape[0] == 1 else v[indices.to(v.device)])
                    for k, v in kwargs.items()}

        return Conditioning(take(self.cond), None if self.uncond is None else take(self.uncond), self.guidance_scale)


@dataclass(frozen=True)
class Prediction:
    """The denoiser's two views of the clean image: ε̂ (noise) and x̂0 (after x0 processing)."""

    eps: torch.Tensor
    x0: torch.Tensor

    def nonfinite_rows(self) -> torch.Tensor:
        """A bool per row: True where ε̂ or x̂0 holds a NaN or Inf."""
        return ~(torch.isfinite(self.eps).flatten(1).all(1) & torch.isfinite(self.x0).flatten(1).all(1))


def _tensor_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    return out[0]


def _pad(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`rows` padded to `count` rows by repeating its last row."""
    return torch.cat([rows, rows[-1:].expand(count - len(rows), *rows.shape[1:])])


class ModelAdapter:
    """Calls the network and converts its output (ε, v or x0 prediction) into a `Prediction`.

    `network_rows` fixes the row count of every network call: rows are processed in chunks of exactly that size,
    the last one padded by repeating its final row. A sample's output then never depends on how many other samples
    share its batch, because CPU conv kernels pick different algorithms by batch size (their results move by ~1e-6).
    `None` calls the network on whatever rows are active (fastest on GPUs, not batch-size invariant).
    """

    def __init__(
        self,
        network: Callable[..., Any],
        schedule: NoiseSchedule,
        *,
        prediction_type: PredictionType = "epsilon",
        x0_processing: X0Processing | None = None,
        network_rows: int | None = 8,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise FieldError("prediction_type", prediction_type,
                             f"is not one of {', '.join(map(repr, PREDICTION_TYPES))}")
        if network_rows is not None and network_rows < 1:
            raise FieldError("network_rows", network_rows, "must be a positive integer or None")
        self.network = network
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.x0_processing = x0_processing or X0Processing()
        self.network_rows = network_rows
        params = next(network.parameters(), None) if isinstance(network, torch.nn.Module) else None
        self.device = params.device if params is not None else torch.device("cpu")
        self.network_dtype = params.dtype if params is not None else torch.float32
        # the sampler state stays in at least float32 even for half-precision networks
        self.dtype = torch.promote_types(self.network_dtype, torch.float32)

    @classmethod
    def from_diffusers(
        cls, network: Callable[..., Any], scheduler_config: Mapping[str, Any], *, network_rows: int | None = 8
    ) -> ModelAdapter:
        """Adapter for a network trained with the given diffusers scheduler config (β schedule, prediction type,
        clip/threshold settings)."""
        return cls(
            network,
            NoiseSchedule.from_config(scheduler_config),
            prediction_type=scheduler_config.get("prediction_type", "epsilon"),
            x0_processing=X0Processing.from_config(scheduler_config),
            network_rows=network_rows,
        )

    def _call(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _tensor_output(self.network(x.to(self.network_dtype), t, **kwargs)).to(self.dtype)

    def network_output(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw network output for rows x at per-row timesteps t, in fixed-size row chunks."""
        rows = self.network_rows
        if rows is None:
            return self._call(x, t, kwargs)
        outputs = []
        for start in range(0, x.shape[0], rows):
            chunk = slice(start, start + rows)
            xs, ts, ks = x[chunk], t[chunk], {k: v[chunk] for k, v in kwargs.items()}
            real = xs.shape[0]
            if real < rows:
                xs, ts, ks = _pad(xs, rows), _pad(ts, rows), {k: _pad(v, rows) for k, v in ks.items()}
            outputs.append(self._call(xs, ts, ks)[:real])
        return torch.cat(outputs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, conditioning: Conditioning | None = None) -> Prediction:
        """Predict ε̂ and x̂0 for x [rows, ...] at per-row integer timesteps t [rows]."""
        uncond = conditioning.uncond if conditioning is not None else None
        if conditioning is not None and uncond is not None and conditioning.guidance_scale != 1.0:
            both = {k: torch.cat([uncond[k], v]) for k, v in conditioning.cond.items()}
            out_uncond, out_cond = self.network_output(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
            out = out_uncond + conditioning.guidance_scale * (out_cond - out_uncond)
        else:
            out = self.network_output(x, t, conditioning.cond if conditioning is not None else {})
        a = self.schedule.alpha_bar(t).to(self.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps, x0 = eps_and_x0(out, x, a, self.prediction_type)
        # as in diffusers, ε̂ stays the unclipped model's: clipping only changes x̂0
        return Prediction(eps=eps, x0=self.x0_processing(x0))

"""A tool-neutral, self-describing schedule file (JSON) and its exporters."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from adaptive_sampler.atomic_write import atomic_write_bytes
from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.timesteps import validate_timesteps


class ModelIdentity(BaseModel):
    """Which network a schedule was found for: a name and the SHA-256 of its weights file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class NoiseScheduleSpec(BaseModel):
    """The β schedule the timesteps refer to (diffusers config names), so σ exports need no model at hand."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_train_timesteps: int = Field(gt=0)
    beta_schedule: str
    beta_start: float = Field(gt=0)
    beta_end: float = Field(gt=0)
    rescale_betas_zero_snr: bool = False

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_config(self.model_dump())


class ScheduleArtifact(BaseModel):
    """An exported timestep schedule with its provenance.

    `timesteps` obey the shared rule (non-empty, integer, unique, strictly descending, inside
    [0, num_train_timesteps - 1]); a bad list fails validation at field `timesteps`.
    """

    model_config = ConfigDict(extra="forbid")
    format_version: Literal[1] = 1
    num_train_timesteps: int = Field(gt=0)
    timesteps: list[int]
    solver: Literal["ddim", "dpmpp-2m", "unipc"] = "ddim"
    eta: float = Field(0.0, ge=0.0, le=1.0)
    model: ModelIdentity
    noise_schedule: NoiseScheduleSpec | None = None
    objective: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    method: str = Field(min_length=1)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    interpolated: bool = False

    @field_validator("timesteps", mode="before")
    @classmethod
    def _valid_timesteps(cls, value: list[int], info: ValidationInfo) -> list[int]:
        total = info.data.get("num_train_timesteps")
        if total is None:  # num_train_timesteps itself failed; pydantic reports that error
            return value
        return validate_timesteps(value, total).tolist()

    @classmethod
    def load(cls, path: str | Path) -> ScheduleArtifact:
        return cls.model_validate_json(Path(path).read_text())

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader never sees a half-written file, and a failed write leaves the old one."""
        atomic_write_bytes(path, (self.model_dump_json(indent=2) + "\n").encode())

    def to_diffusers_timesteps(self) -> list[int]:
        """For `pipeline(..., timesteps=...)` or `AdaptiveDDIMScheduler.set_timesteps(timesteps=...)`."""
        return list(self.timesteps)

    def to_sigmas(self, schedule: NoiseSchedule | None = None) -> list[float]:
        """σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) at each timestep plus the final 0, for σ-based schedulers' `sigmas=`."""
        schedule = schedule or self._own_schedule()
        if schedule.num_train_timesteps != self.num_train_timesteps:
            raise FieldError("schedule", schedule.num_train_timesteps, "training timesteps differ from the "
                             f"artifact's num_train_timesteps={self.num_train_timesteps}")
        sigmas = schedule.sigmas().numpy()[np.asarray(self.timesteps)]
        return [float(s) for s in sigmas] + [0.0]

    def to_comfyui_sigmas(self, schedule: NoiseSchedule | None = None) -> str:
        """ComfyUI SIGMAS as text: comma-separated σ values ending in 0 (for string-to-SIGMAS nodes)."""
        return ", ".join(f"{s:.6f}" for s in self.to_sigmas(schedule))

    def _own_schedule(self) -> NoiseSchedule:
        if self.noise_schedule is None:
            raise FieldError("schedule", None, "cannot be used: the artifact has no noise_schedule; pass the model's "
                             "NoiseSchedule")
        return self.noise_schedule.noise_schedule()

"""Policies that replay an exported schedule: a catalogue entry by name, or a schedule file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.schedules.catalogue import interpolate, load_entry
from adaptive_sampler.timesteps import validate_timesteps


def _checked(artifact: ScheduleArtifact, schedule: NoiseSchedule, source: str, kind: str) -> torch.Tensor:
    if artifact.num_train_timesteps != schedule.num_train_timesteps:
        raise FieldError("policy", source, f"is a {kind} made for num_train_timesteps="
                         f"{artifact.num_train_timesteps}, the model has {schedule.num_train_timesteps}")
    return validate_timesteps(artifact.timesteps, schedule.num_train_timesteps)


@dataclass(frozen=True)
class Learned:
    """A catalogue entry (`<model>/<family>-<N>`); other step counts are interpolated (see catalogue)."""

    name: str

    def artifact(self, num_steps: int | None = None) -> ScheduleArtifact:
        return load_entry(self.name, num_steps)

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        return _checked(self.artifact(num_steps), schedule, self.name, "catalogue entry")


@dataclass(frozen=True)
class FromFile:
    """A ScheduleArtifact JSON file; another step count interpolates it."""

    path: Path

    def artifact(self, num_steps: int | None = None) -> ScheduleArtifact:
        if not Path(self.path).is_file():
            raise FieldError("policy", str(self.path), "is a schedule file that does not exist")
        artifact = ScheduleArtifact.load(self.path)
        if num_steps is not None and num_steps != len(artifact.timesteps):
            return interpolate(artifact, num_steps)
        return artifact

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        return _checked(self.artifact(num_steps), schedule, str(self.path), "schedule file")

"""Policies that replay a schedule artifact: a catalogue entry by name (`learned:<model>/<family>-<N>`), or a
schedule file (`file:<path>`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from adaptive_sampler.errors import FieldError, FileFieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.schedules.artifact import ScheduleArtifact, noise_schedule_mismatch
from adaptive_sampler.schedules.catalogue import interpolate, load_entry
from adaptive_sampler.timesteps import validate_timesteps

if TYPE_CHECKING:
    from adaptive_sampler.pipeline import LoadedModel


def _checked(artifact: ScheduleArtifact, schedule: NoiseSchedule, source: str, kind: str) -> torch.Tensor:
    if artifact.num_train_timesteps != schedule.num_train_timesteps:
        raise FieldError("policy", source, f"is a {kind} made for num_train_timesteps="
                         f"{artifact.num_train_timesteps}, the model has {schedule.num_train_timesteps}")
    return validate_timesteps(artifact.timesteps, schedule.num_train_timesteps)


@dataclass(frozen=True)
class _Replay:
    """A policy that replays a schedule artifact. Each step count's artifact is read once per policy object: a run
    asks for it in `check_solver`, `check_model`, `interpolated_from` and `timesteps`."""

    _artifacts: dict[int | None, ScheduleArtifact] = field(default_factory=dict, init=False, compare=False,
                                                            repr=False)

    @property
    def source(self) -> str:
        raise NotImplementedError

    def artifact(self, num_steps: int | None = None) -> ScheduleArtifact:
        """The artifact at `num_steps` (None: as stored)."""
        if num_steps not in self._artifacts:
            self._artifacts[num_steps] = self._read(num_steps)
        return self._artifacts[num_steps]

    def _read(self, num_steps: int | None) -> ScheduleArtifact:
        raise NotImplementedError


@dataclass(frozen=True)
class CatalogueEntry(_Replay):
    """A catalogue entry (`<model>/<family>-<N>`); another step count is its family's file of that length, or an
    interpolation (see `schedules.catalogue.load_entry`)."""

    name: str

    @property
    def source(self) -> str:
        return f"learned:{self.name}"

    def _read(self, num_steps: int | None) -> ScheduleArtifact:
        return load_entry(self.name, num_steps)

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        return _checked(self.artifact(num_steps), schedule, self.name, "catalogue entry")


@dataclass(frozen=True)
class FromFile(_Replay):
    """A ScheduleArtifact JSON file; another step count interpolates it. Errors in the file name `policy`, the file
    and the field inside it (`FileFieldError`)."""

    path: Path

    @property
    def source(self) -> str:
        return f"file:{self.path}"

    def _read(self, num_steps: int | None) -> ScheduleArtifact:
        if num_steps is not None:  # the file, read once, interpolated when its length differs
            stored = self.artifact()
            return interpolate(stored, num_steps) if num_steps != len(stored.timesteps) else stored
        if str(self.path) in ("", "."):
            raise FieldError("policy", "file:", "names no file; use file:PATH (a schedule JSON file)")
        if not Path(self.path).exists():
            raise FieldError("policy", str(self.path), "is a schedule file that does not exist")
        return ScheduleArtifact.read(self.path, field="policy", shown=self.source)

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor:
        return _checked(self.artifact(num_steps), schedule, str(self.path), "schedule file")


def check_model(policy: object, model: LoadedModel, *, allow_other_model: bool = False) -> str | None:
    """Refuse a schedule file or catalogue entry made for another model: one whose recorded weights SHA-256 or
    noise schedule differs from `model`'s (a FieldError naming `policy` and both models). What a file does not
    record is not compared.

    Args:
        policy: any policy; only a CatalogueEntry or FromFile is checked.
        model: the loaded model the run samples.
        allow_other_model: run the list on another model anyway (`--allow-other-model`).

    Returns:
        With `allow_other_model` and another model, the warning to show; else None.
    """
    if not isinstance(policy, _Replay):
        return None
    artifact = policy.artifact()
    made_for, mismatch = artifact.model, noise_schedule_mismatch(artifact, model.scheduler_config)
    if made_for.weights_sha256 is not None and made_for.weights_sha256 != model.weights_sha256:
        theirs, ours = (f"weights SHA-256 {h[:12]}…" for h in (made_for.weights_sha256, model.weights_sha256))
    elif mismatch:
        theirs, ours = (", ".join(f"{k} {values[side]}" for k, values in mismatch.items()) for side in (0, 1))
    else:
        return None
    what = f"was made for model {made_for.name!r} ({theirs}); this run samples {model.name!r} ({ours})"
    if allow_other_model:
        return f"warning: --policy {policy.source} {what}; running it anyway (--allow-other-model)"
    raise FieldError("policy", policy.source, f"{what}; a schedule tuned for one model is not one for another: "
                                              "pass --allow-other-model to run it anyway")


def interpolated_from(policy: object, num_steps: int | None) -> int | None:
    """The length of the list a schedule file or catalogue entry had when `num_steps` makes the run interpolate it
    to another length (`schedules.catalogue.interpolate`); None when the run replays a stored list as it is."""
    if num_steps is None or not isinstance(policy, _Replay):
        return None
    own = len(policy.artifact().timesteps)
    return own if own != num_steps and policy.artifact(num_steps).interpolated else None


def check_solver(policy: object, solver: str) -> None:
    """Refuse to run a schedule file or catalogue entry under another solver than the one it was made for (a list
    tuned for UniPC is not a good DDIM list): FieldError naming `policy` and both solvers.

    Args:
        policy: any policy; only a CatalogueEntry or FromFile is checked.
        solver: the run's solver name.
    """
    if not isinstance(policy, _Replay):
        return
    made_for = policy.artifact().solver
    if made_for != solver:
        raise FileFieldError("policy", policy.source, f"is the solver this schedule was made for, but this run uses "
                             f"--solver {solver}; pass --solver {made_for}, or use a schedule made for {solver}",
                             "solver", made_for)

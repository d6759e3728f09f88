"""The catalogue: the shipped policy files, the repository's top-level `policies/` (the package
`adaptive_sampler.policy_files` once installed).

Entries are `<model>/<family>-<N>.json` files (ScheduleArtifact), named `<model>/<family>-<N>` (e.g. `sd15/ays-10`,
`fashion-mnist/ddim-10`; `--policy learned:<name>` on the command line). A request for another step count of a
family is answered by its entry of that length, else by log-linear interpolation of the named entry, marked
`interpolated`.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import numpy as np

from adaptive_sampler.errors import FieldError
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.timesteps import discretize

_KEY = re.compile(r"^(?P<family>[A-Za-z0-9_.-]+/[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*?)-(?P<steps>\d+)$")


def catalogue_dir() -> Path:
    """The folder of the shipped policy files, one sub-folder per model (`policies/` in an editable install)."""
    return Path(str(files("adaptive_sampler.policy_files")))


def list_entries(root: Path | None = None) -> list[str]:
    """All entry names in the catalogue folder `root` (default `catalogue_dir()`), sorted."""
    root = root or catalogue_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.json"))


def interpolate(artifact: ScheduleArtifact, num_steps: int) -> ScheduleArtifact:
    """Resample a schedule to `num_steps` by linear interpolation of log(t + 1) over the normalised step index
    (the log-linear rule of Align Your Steps, Sabour et al. 2024; +1 keeps t = 0 finite).

    Args:
        num_steps: the new length, in [1, num_train_timesteps].
    """
    if num_steps < 1 or num_steps > artifact.num_train_timesteps:
        raise FieldError("num_steps", num_steps, f"is outside [1, {artifact.num_train_timesteps}]")
    old = np.log(np.asarray(artifact.timesteps, dtype=np.float64)[::-1] + 1)
    new = np.interp(np.linspace(0, 1, num_steps), np.linspace(0, 1, len(old)), old)
    timesteps = discretize(np.exp(new[::-1]) - 1, artifact.num_train_timesteps).tolist()
    return artifact.model_copy(update={"timesteps": timesteps, "fractional": False, "interpolated": True, "metrics": {},
                                       "method": f"{artifact.method}; log-linear interpolation to {num_steps} steps"})


def load_entry(name: str, num_steps: int | None = None, root: Path | None = None) -> ScheduleArtifact:
    """Load catalogue entry `name` (e.g. `sd15/ays-10`). With `num_steps` different from the entry's, return the
    family's entry of that length if there is one, else the named entry interpolated to it.

    Args:
        name: `<model>/<family>-<N>`.
        num_steps: the step count wanted; None for the entry's own.
        root: the catalogue folder; default `catalogue_dir()`.
    """
    root = root or catalogue_dir()
    match = _KEY.match(name)
    if match is None:
        raise FieldError("policy", name, "is not a catalogue name of the form <model>/<family>-<N>")
    path = root / f"{name}.json"
    if not path.exists():
        known = ", ".join(list_entries(root)) or "none"
        raise FieldError("policy", name, f"is a catalogue entry that does not exist; known entries: {known}")
    if num_steps is not None and num_steps != int(match["steps"]):
        sibling = root / f"{match['family']}-{num_steps}.json"
        if sibling.exists():
            return ScheduleArtifact.read(sibling, field="policy", shown=f"learned:{match['family']}-{num_steps} "
                                         f"({sibling})")
        return interpolate(ScheduleArtifact.read(path, field="policy", shown=f"learned:{name} ({path})"), num_steps)
    return ScheduleArtifact.read(path, field="policy", shown=f"learned:{name} ({path})")

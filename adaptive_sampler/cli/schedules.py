"""`adaptive-sampler schedules list|show`: the catalogue of shipped policy files (the repository's `policies/`), and
the user's own schedule files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from adaptive_sampler.errors import FieldError
from adaptive_sampler.schedules.catalogue import list_entries, load_entry

FORMATS = ("json", "diffusers", "sigmas", "comfyui")


def list_command() -> None:
    """List the catalogue's schedules."""
    for name in list_entries():
        artifact = load_entry(name)
        typer.echo(f"{name:28s} {len(artifact.timesteps):3d} steps  {artifact.solver:9s} {artifact.model.name}")


def show_command(
    name: Annotated[str, typer.Argument(help="catalogue entry, e.g. sd15/ays-10, or a schedule file (a path to a "
                                        ".json file, or file:PATH)")],
    steps: Annotated[int | None, typer.Option(help="another step count (log-linear interpolation)")] = None,
    format: Annotated[str, typer.Option(help="json, diffusers, sigmas or comfyui")] = "json",
) -> None:
    """Print a catalogue schedule or a schedule file, as its JSON or as an export."""
    if format not in FORMATS:
        raise FieldError("format", format, f"is not one of {', '.join(FORMATS)}")
    path = name.removeprefix("file:")
    if name.startswith("file:") or path.endswith(".json") or Path(path).is_file():
        from adaptive_sampler.policies.replay import FromFile  # imports torch: only for a file

        artifact = FromFile(Path(path)).artifact(steps)
    else:
        artifact = load_entry(name, steps)
    text = {
        "json": lambda: artifact.model_dump_json(indent=2),
        "diffusers": lambda: json.dumps(artifact.to_diffusers_timesteps()),
        "sigmas": lambda: json.dumps(artifact.to_sigmas()),
        "comfyui": artifact.to_comfyui_sigmas,
    }[format]()
    typer.echo(text)

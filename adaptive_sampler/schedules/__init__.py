"""Schedules: the tool-neutral schedule file (`ScheduleArtifact`), its exporters, and the catalogue of shipped
policy files (the repository's `policies/`, named `<model>/<family>-<N>`, e.g. `learned:fashion-mnist/ddim-10`)."""

from adaptive_sampler.schedules.artifact import ModelIdentity, NoiseScheduleSpec, ScheduleArtifact
from adaptive_sampler.schedules.catalogue import catalogue_dir, interpolate, list_entries, load_entry

__all__ = ["ModelIdentity", "NoiseScheduleSpec", "ScheduleArtifact", "catalogue_dir", "interpolate",
           "list_entries", "load_entry"]

"""adaptive-sampler: fewer network passes per diffusion sample.

A DDIM core over any explicit timestep list, pluggable step-allocation policies, a schedule catalogue with
tool-neutral exports, and a diffusers drop-in scheduler.
"""

from adaptive_sampler.diffusers_scheduler import AdaptiveDDIMScheduler
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter, Prediction, X0Processing
from adaptive_sampler.models import LoadedModel, embedded_model_dir, load_model
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.planner import Planner, StaticPlan, StepDecision, StepObservation
from adaptive_sampler.policies import Policy, make_policy
from adaptive_sampler.policies.step_size_control import StepSizeControl
from adaptive_sampler.sampler import NonFiniteOutputError, SampleResult, SamplingOptions, sample
from adaptive_sampler.schedules import (
    ModelIdentity,
    NoiseScheduleSpec,
    ScheduleArtifact,
    interpolate,
    list_entries,
    load_entry,
)
from adaptive_sampler.solvers import DDIM, Solver, make_solver
from adaptive_sampler.solvers.ddim import ddim_sigma, ddim_step
from adaptive_sampler.step_info import StepInfo
from adaptive_sampler.timesteps import discretize, validate_timesteps

__all__ = [
    "AdaptiveDDIMScheduler", "Conditioning", "DDIM", "LoadedModel", "ModelAdapter", "ModelIdentity", "NoiseSchedule",
    "NoiseScheduleSpec", "NonFiniteOutputError", "Policy", "Planner", "Prediction", "SampleResult", "SamplingOptions",
    "ScheduleArtifact", "Solver", "StaticPlan", "StepDecision", "StepInfo", "StepObservation", "StepSizeControl",
    "X0Processing", "ddim_sigma", "ddim_step", "discretize", "embedded_model_dir", "interpolate", "list_entries",
    "load_entry", "load_model", "make_policy", "make_solver", "sample", "validate_timesteps",
]

"""adaptive-sampler: fewer network passes per diffusion sample.

A DDIM core over any explicit timestep list, pluggable step-allocation policies, a schedule catalogue with
tool-neutral exports, a schedule search (`tune`), and diffusers drop-in schedulers (DDIM, DPM-Solver++(2M), UniPC).

The public names below are imported on first use (PEP 562), so `import adaptive_sampler.errors` or the CLI's
`--help` do not pay for torch and diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adaptive_sampler._lazy import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "AdaptiveDDIMScheduler": "dropins", "AdaptiveDPMSolverMultistepScheduler": "dropins",
    "AdaptiveUniPCMultistepScheduler": "dropins", "use_schedule": "dropins",
    "Conditioning": "model_adapter", "ModelAdapter": "model_adapter", "Prediction": "model_adapter",
    "X0Processing": "model_adapter",
    "LoadedModel": "models", "embedded_model_dir": "models", "embedded_t2i_dir": "models", "load_model": "models",
    "Conditions": "pipeline", "GuidanceInterval": "guidance",
    "NoiseSchedule": "noise_schedule",
    "Finish": "finish", "Planner": "planner", "StaticPlan": "planner", "StepDecision": "planner",
    "StepObservation": "planner",
    "Policy": "policies", "make_policy": "policies",
    "StepSizeControl": "policies.step_size_control", "SteeredPlan": "policies.step_size_control",
    "NonFiniteOutputError": "sampler", "SampleResult": "sampler", "SamplingOptions": "sampler", "sample": "sampler",
    "ModelIdentity": "schedules", "NoiseScheduleSpec": "schedules", "ScheduleArtifact": "schedules",
    "interpolate": "schedules", "list_entries": "schedules", "load_entry": "schedules",
    "DDIM": "solvers", "Solver": "solvers", "make_solver": "solvers",
    "ddim_sigma": "solvers.ddim", "ddim_step": "solvers.ddim",
    "StepInfo": "step_info",
    "discretize": "timesteps", "validate_timesteps": "timesteps",
    "TuneOptions": "tuning.settings", "TuneResult": "tuning.runner", "tune": "tuning.runner",
    "FieldError": "errors",
}
__all__ = [  # the names of _EXPORTS, spelled out for linters and type checkers
    "AdaptiveDDIMScheduler", "AdaptiveDPMSolverMultistepScheduler", "AdaptiveUniPCMultistepScheduler", "Conditioning",
    "Conditions", "DDIM", "FieldError", "Finish", "GuidanceInterval", "LoadedModel", "ModelAdapter", "ModelIdentity",
    "NoiseSchedule", "NoiseScheduleSpec", "NonFiniteOutputError", "Planner", "Policy", "Prediction", "SampleResult",
    "SamplingOptions", "ScheduleArtifact", "Solver", "StaticPlan", "SteeredPlan", "StepDecision", "StepInfo",
    "StepObservation", "StepSizeControl", "TuneOptions", "TuneResult", "X0Processing", "ddim_sigma", "ddim_step",
    "discretize", "embedded_model_dir", "embedded_t2i_dir", "interpolate", "list_entries", "load_entry", "load_model",
    "make_policy", "make_solver", "sample", "tune", "use_schedule", "validate_timesteps",
]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from adaptive_sampler.dropins import (
        AdaptiveDDIMScheduler,
        AdaptiveDPMSolverMultistepScheduler,
        AdaptiveUniPCMultistepScheduler,
        use_schedule,
    )
    from adaptive_sampler.errors import FieldError
    from adaptive_sampler.finish import Finish
    from adaptive_sampler.guidance import GuidanceInterval
    from adaptive_sampler.model_adapter import Conditioning, ModelAdapter, Prediction, X0Processing
    from adaptive_sampler.models import LoadedModel, embedded_model_dir, embedded_t2i_dir, load_model
    from adaptive_sampler.noise_schedule import NoiseSchedule
    from adaptive_sampler.pipeline import Conditions
    from adaptive_sampler.planner import Planner, StaticPlan, StepDecision, StepObservation
    from adaptive_sampler.policies import Policy, make_policy
    from adaptive_sampler.policies.step_size_control import SteeredPlan, StepSizeControl
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
    from adaptive_sampler.tuning.runner import TuneResult, tune
    from adaptive_sampler.tuning.settings import TuneOptions

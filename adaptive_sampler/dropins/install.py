"""`use_schedule`: install the drop-in that runs a schedule artifact on a diffusers pipeline, in one call."""

from __future__ import annotations

from typing import Any

from diffusers.schedulers.scheduling_utils import SchedulerMixin

from adaptive_sampler.dropins.ddim import AdaptiveDDIMScheduler
from adaptive_sampler.dropins.dpmpp_2m import AdaptiveDPMSolverMultistepScheduler
from adaptive_sampler.dropins.unipc import AdaptiveUniPCMultistepScheduler
from adaptive_sampler.errors import FieldError
from adaptive_sampler.schedules.artifact import ScheduleArtifact, noise_schedule_mismatch

DROPINS: dict[str, type[SchedulerMixin]] = {
    "ddim": AdaptiveDDIMScheduler,
    "dpmpp-2m": AdaptiveDPMSolverMultistepScheduler,
    "unipc": AdaptiveUniPCMultistepScheduler,
}

# the settings under which each drop-in steps as the project's solver of the same name (they override the
# pipeline's scheduler config; all its other keys, the β schedule and prediction type among them, are kept)
SOLVER_SETTINGS: dict[str, dict[str, Any]] = {
    "ddim": {"set_alpha_to_one": True},
    "dpmpp-2m": {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                 "lower_order_final": True, "euler_at_final": False, "final_sigmas_type": "zero",
                 "use_karras_sigmas": False, "use_lu_lambdas": False, "use_exponential_sigmas": False,
                 "use_beta_sigmas": False, "use_flow_sigmas": False},
    "unipc": {"solver_order": 2, "solver_type": "bh2", "predict_x0": True, "lower_order_final": True,
              "disable_corrector": [], "final_sigmas_type": "zero", "use_karras_sigmas": False,
              "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False},
}

def use_schedule(pipe: Any, artifact: ScheduleArtifact, solver: str | None = None) -> dict[str, Any]:
    """Install on `pipe` the drop-in of `artifact.solver` and return the keyword arguments that run the artifact's
    list: `pipe(prompt, **use_schedule(pipe, artifact))`.

    The drop-in is built from the pipeline's scheduler config (β schedule, prediction type, …) with the settings
    under which it steps as the project's sampler (`SOLVER_SETTINGS`; DDIM ends at ᾱ = 1 and returns x̂0, as the
    sampler does). Refused, with a FieldError naming the field: a `solver` other than the artifact's (a list
    learned for one solver is not a good list for another), a list made for another `num_train_timesteps` or
    another β schedule, and a fractional list for DDIM (its table is indexed by integer t; round the list with
    `artifact.to_diffusers_timesteps()` and pass it yourself if you accept that).
    """
    if solver is not None and solver != artifact.solver:
        raise FieldError("solver", solver, f"differs from the artifact's solver {artifact.solver!r}, which its list "
                         "was made for; use that solver or a list made for this one")
    config = dict(pipe.scheduler.config)
    total = config.get("num_train_timesteps")
    if total != artifact.num_train_timesteps:
        raise FieldError("num_train_timesteps", artifact.num_train_timesteps, "is the artifact's, made for another "
                         f"model: the pipeline's scheduler has num_train_timesteps={total}")
    for key, (ours, theirs) in noise_schedule_mismatch(artifact, config).items():  # the first one is refused
        raise FieldError(f"noise_schedule.{key}", ours, f"differs from the pipeline's {key}={theirs!r}; the list "
                         "was made for another noise schedule")
    if artifact.solver == "ddim" and artifact.fractional:
        raise FieldError("timesteps", artifact.timesteps, "is fractional; the DDIM drop-in indexes ᾱ by integer t "
                         "(round it: artifact.to_diffusers_timesteps())")
    pipe.scheduler = DROPINS[artifact.solver].from_config(config, **SOLVER_SETTINGS[artifact.solver])
    kwargs: dict[str, Any] = {"timesteps": list(artifact.timesteps)}
    if artifact.solver == "ddim" and artifact.eta > 0:
        kwargs["eta"] = artifact.eta
    return kwargs

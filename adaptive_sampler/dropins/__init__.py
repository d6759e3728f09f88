"""diffusers drop-in schedulers that run the project's (learned) timestep lists, one per solver, and
`use_schedule`, which installs the right one for a schedule artifact. Their list handling is shared
(`list_handling`)."""

from adaptive_sampler.dropins.ddim import AdaptiveDDIMScheduler
from adaptive_sampler.dropins.dpmpp_2m import AdaptiveDPMSolverMultistepScheduler
from adaptive_sampler.dropins.install import DROPINS, use_schedule
from adaptive_sampler.dropins.unipc import AdaptiveUniPCMultistepScheduler

__all__ = ["DROPINS", "AdaptiveDDIMScheduler", "AdaptiveDPMSolverMultistepScheduler",
           "AdaptiveUniPCMultistepScheduler", "use_schedule"]

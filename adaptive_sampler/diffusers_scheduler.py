"""The DDIM drop-in's first home, kept so that `from adaptive_sampler.diffusers_scheduler import ...` still works;
the drop-ins live in `adaptive_sampler.dropins`."""

from adaptive_sampler.dropins.ddim import AdaptiveDDIMScheduler

__all__ = ["AdaptiveDDIMScheduler"]

"""Solvers: the update rule of a sampling run, chosen like a policy."""

from adaptive_sampler.solvers.base import Solver, SolverState, StepSchedule
from adaptive_sampler.solvers.ddim import DDIM, ddim_sigma, ddim_step

SOLVERS: dict[str, type] = {"ddim": DDIM}


def make_solver(name: str) -> Solver:
    """The solver called `name` (see SOLVERS)."""
    if name not in SOLVERS:
        raise ValueError(f"solver: {name!r} is not one of {', '.join(SOLVERS)}")
    return SOLVERS[name]()


__all__ = ["DDIM", "SOLVERS", "Solver", "SolverState", "StepSchedule", "ddim_sigma", "ddim_step", "make_solver"]

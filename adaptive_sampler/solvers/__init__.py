"""Solvers: the update rule of a sampling run, chosen like a policy."""

from adaptive_sampler.errors import FieldError, did_you_mean
from adaptive_sampler.solvers.base import Point, Solver, SolverState
from adaptive_sampler.solvers.ddim import DDIM, ddim_sigma, ddim_step
from adaptive_sampler.solvers.dpmpp_2m import DPMSolverPP2M
from adaptive_sampler.solvers.unipc import UniPC

SOLVERS: dict[str, type] = {"ddim": DDIM, "dpmpp-2m": DPMSolverPP2M, "unipc": UniPC}


def make_solver(name: str) -> Solver:
    """A new solver; an unknown name raises FieldError naming `solver`.

    Args:
        name: ddim, dpmpp-2m or unipc (see SOLVERS).
    """
    if name not in SOLVERS:
        raise FieldError("solver", name, f"is not one of {', '.join(SOLVERS)}{did_you_mean(name, SOLVERS)}")
    return SOLVERS[name]()


__all__ = ["DDIM", "DPMSolverPP2M", "Point", "SOLVERS", "Solver", "SolverState", "UniPC", "ddim_sigma",
           "ddim_step", "make_solver"]

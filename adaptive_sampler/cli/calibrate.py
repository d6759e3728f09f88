"""`adaptive-sampler calibrate`: the threshold of a monitor that exits earliest while its exits meet a target, for
one model and plan (`monitors.calibration`): full runs on the calibration seed and on a held-out seed, recorded
once and replayed offline; prints the calibrated `--monitor` spec."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from adaptive_sampler.cli.common import decode_rows, options_command, row_policy
from adaptive_sampler.cli.outputs import OutputPaths
from adaptive_sampler.errors import FieldError
from adaptive_sampler.options import CalibrateOptions

if TYPE_CHECKING:
    from adaptive_sampler.monitors import CalibrationTarget

EXAMPLES = (
    "adaptive-sampler calibrate --model embedded --steps 20 --monitor x0-l2 --target-psnr 30",
    "adaptive-sampler calibrate --model embedded-t2i --prompt 'a shoe' --monitor lpips,patience=2 --target-psnr 28",
    "adaptive-sampler calibrate --solver dpmpp-2m --steps 10 --target-kid-pct 5 --n 256 --json calib.json",
)


def _target(options: CalibrateOptions) -> CalibrationTarget:
    from adaptive_sampler.monitors import DistributionTarget, PsnrTarget

    if options.target_psnr is not None:
        return PsnrTarget(options.target_psnr)
    if options.target_fid_pct is not None:
        return DistributionTarget("fid", options.target_fid_pct)
    assert options.target_kid_pct is not None  # the options model asks for exactly one target
    return DistributionTarget("kid", options.target_kid_pct)


@options_command(CalibrateOptions)
def calibrate_command(options: CalibrateOptions) -> None:
    """Find the threshold of a --monitor that exits earliest while meeting one target on the calibration seed,
    report what it gives on the held-out seed, and print the calibrated --monitor spec."""
    from adaptive_sampler.models import load_model, resolve_device
    from adaptive_sampler.monitors import calibrate_threshold, record_x0_trace
    from adaptive_sampler.monitors.spec import calibration_monitor
    from adaptive_sampler.policies import check_solver, make_policy
    from adaptive_sampler.solvers import make_solver

    outputs = OutputPaths.check(json=options.json_path)  # before any work
    if options.policy.startswith(("adaptive", "steered", "explicit")):
        raise FieldError("policy", options.policy, "is not a named static list; calibrate a built-in, learned: or "
                                                   "file: policy (a threshold holds for one list)")
    monitor, space = calibration_monitor(options.monitor)
    target = _target(options)
    device = resolve_device(options.device)
    rows = row_policy(options.network_rows, device)
    solver = make_solver(options.solver)
    loaded = load_model(options.model, allow_pickle=options.allow_pickle, device=device, height=options.height,
                        width=options.width).with_conditions(options.conditions())
    adapter = loaded.adapter(network_rows=rows)
    policy = make_policy(options.policy)
    check_solver(policy, options.solver)
    timesteps = policy.timesteps(options.steps, adapter.schedule)
    chunk = decode_rows(rows)
    latent = {} if loaded.decoder is None else {
        "conditioning": loaded.conditioning, "decode": lambda x: loaded.decode(x, chunk), "space": space}
    calibration, heldout = (
        record_x0_trace(adapter, loaded.sample_shape, timesteps, [seed], options.n, batch_size=options.batch_size,
                        progress=True, solver=solver, **latent)  # type: ignore[arg-type]
        for seed in (options.seed, options.heldout_seed))
    result = calibrate_threshold(monitor, target, calibration, heldout, grid_size=options.grid_size)
    if "json" in outputs.paths:
        outputs.write({"json": (json.dumps(result.to_json(), indent=2) + "\n").encode()})
    held, cal = result.heldout, result.calibration
    met = "met" if result.heldout_met_target else "missed"
    reached = "" if result.met_target else (" (no threshold meets the target on the calibration seed: this is the "
                                            "most conservative one)")
    metric = "" if result.target_distribution is None or held.distribution is None else \
        f", {result.target_distribution['metric'].upper()} {held.distribution:.4g}"
    typer.echo(result.monitor)
    typer.echo(f"{loaded.name}, {options.solver}, {options.policy}, {options.steps} steps: NFE mean "
               f"{cal.nfe_mean:.1f} calibration / {held.nfe_mean:.1f} held-out, held-out PSNR {held.psnr:.2f} dB"
               f"{metric}; target {met} on the held-out seed{reached}. Use: --monitor {result.monitor} --steps "
               f"{options.steps}")

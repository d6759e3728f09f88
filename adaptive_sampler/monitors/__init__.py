"""Early-exit monitors on x̂0: per-row done masks with warm-up, patience and check-every-k guardrails.

    monitor = AnyOf(make_monitor("x0-l2", 0.01, guardrails=Guardrails(patience=2)), MaxNFE(40))
    result = sample(adapter, timesteps, shape, n, monitor=monitor)

`monitor_from_spec` builds the same from the command line's spec string `x0-l2:0.01,patience=2|max-nfe:40`.
A sample a monitor marks done finishes with a short solver tail to t = 0 (`sample(..., finish=Finish(steps=K))`,
counted in NFE) or returns x̂0 of that step (`Finish(mode="x0")`, NFE = step + 1), and leaves the network batch. A
steering monitor (`SteeringChange`, `steer-x0-l2:LOW:HIGH`) doubles or halves a sample's next step instead.
Thresholds do not transfer between models or step counts: calibrate them with `monitors.calibrate_threshold` (a
steering monitor's LOW/HIGH to a mean NFE with `monitors.calibrate_steering`).
"""

from adaptive_sampler.monitors.base import Guardrails, Monitor, MonitorDecision, RowState, ThresholdMonitor
from adaptive_sampler.monitors.budget import Deadline, MaxNFE
from adaptive_sampler.monitors.calibration import (
    CalibrationResult,
    CalibrationTarget,
    DistributionTarget,
    ExitSimulation,
    FeatureDistanceTarget,
    PsnrTarget,
    X0Trace,
    calibrate_threshold,
    record_x0_trace,
)
from adaptive_sampler.monitors.change import ChangeMonitor, SteeringChange
from adaptive_sampler.monitors.composite import AllOf, AnyOf
from adaptive_sampler.monitors.distances import (
    DISTANCES,
    GMSD,
    LPIPS,
    SSIM,
    Distance,
    Features,
    HaarPSI,
    RelativeL2,
    Sharpness,
    laplacian_variance,
    make_distance,
)
from adaptive_sampler.monitors.lpips_distance import (
    LPIPSWeightsMissingError,
    backbone_weights_path,
    build_lpips,
    linear_weights_path,
)
from adaptive_sampler.monitors.spec import (
    BUDGET_NAMES,
    DEFAULTS_PATH,
    MONITOR_NAMES,
    MONITORS,
    calibrated_default,
    load_calibrated_defaults,
    make_monitor,
    monitor_from_spec,
)
from adaptive_sampler.monitors.steering_calibration import SteeringCalibration, calibrate_steering

__all__ = [
    "BUDGET_NAMES",
    "DEFAULTS_PATH",
    "DISTANCES",
    "GMSD",
    "LPIPS",
    "MONITORS",
    "MONITOR_NAMES",
    "SSIM",
    "AllOf",
    "AnyOf",
    "CalibrationResult",
    "CalibrationTarget",
    "DistributionTarget",
    "ChangeMonitor",
    "Deadline",
    "Distance",
    "ExitSimulation",
    "FeatureDistanceTarget",
    "Features",
    "Guardrails",
    "HaarPSI",
    "LPIPSWeightsMissingError",
    "MaxNFE",
    "Monitor",
    "MonitorDecision",
    "PsnrTarget",
    "RelativeL2",
    "RowState",
    "Sharpness",
    "SteeringCalibration",
    "SteeringChange",
    "ThresholdMonitor",
    "X0Trace",
    "backbone_weights_path",
    "build_lpips",
    "calibrate_steering",
    "calibrate_threshold",
    "calibrated_default",
    "laplacian_variance",
    "linear_weights_path",
    "load_calibrated_defaults",
    "make_distance",
    "make_monitor",
    "monitor_from_spec",
    "record_x0_trace",
]

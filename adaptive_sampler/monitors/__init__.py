"""Early-exit monitors on x̂0: per-sample done masks with warm-up, patience and check-every-k guardrails.

    monitor = monitor_from_spec("x0-l2:0.01,patience=2|max-nfe:40")
    result = sample(adapter, timesteps, shape, n, callback=monitor.as_callback())

A sample a monitor marks done returns x̂0 of that step (its NFE is step + 1) and leaves the network batch.
Thresholds do not transfer between models or step counts: calibrate them with `adaptive_sampler.calibration`.
"""

from adaptive_sampler.monitors.base import (
    Guardrails,
    Monitor,
    MonitorDecision,
    SampleState,
    advance_streak,
)
from adaptive_sampler.monitors.budget import Deadline, MaxNFE
from adaptive_sampler.monitors.change import (
    ChangeMonitor,
    FeatureChange,
    GMSDChange,
    HaarPSIChange,
    Sharpness,
    SSIMChange,
    X0L2,
    laplacian_variance,
)
from adaptive_sampler.monitors.composite import AllOf, AnyOf
from adaptive_sampler.monitors.lpips_monitor import (
    LPIPSChange,
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
    monitor_from_spec,
)

__all__ = [
    "BUDGET_NAMES",
    "DEFAULTS_PATH",
    "MONITORS",
    "MONITOR_NAMES",
    "AllOf",
    "AnyOf",
    "ChangeMonitor",
    "Deadline",
    "FeatureChange",
    "GMSDChange",
    "Guardrails",
    "HaarPSIChange",
    "LPIPSChange",
    "LPIPSWeightsMissingError",
    "MaxNFE",
    "Monitor",
    "MonitorDecision",
    "SSIMChange",
    "SampleState",
    "Sharpness",
    "X0L2",
    "advance_streak",
    "backbone_weights_path",
    "build_lpips",
    "calibrated_default",
    "laplacian_variance",
    "linear_weights_path",
    "load_calibrated_defaults",
    "monitor_from_spec",
]

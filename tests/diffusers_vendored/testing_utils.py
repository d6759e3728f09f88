# Vendored from huggingface/diffusers (Apache License 2.0, http://www.apache.org/licenses/LICENSE-2.0; the upstream
# file carries no licence header of its own), tests/testing_utils.py at commit
# 58eb52c0803ea9af3abec60841c2a093bdf1f951 (main, 0.40.0.dev0): the newest stored snapshot has no v0.42.1 tag, and
# its src/diffusers/schedulers/scheduling_ddim.py and scheduling_utils.py are byte-identical to the installed 0.42.1.
# Changes: only the two names the scheduler tests import are kept, `torch_device` and `CaptureLogger`, with the
# imports they need; the device choice is moved out of its `if is_torch_available():` block (torch is required
# here) and dedented; the `ruff: noqa` line below keeps upstream's style as it is.
# ruff: noqa
import logging
import os
from io import StringIO

import torch
from packaging import version

from diffusers.utils.import_utils import is_torch_neuronx_available
from diffusers.utils.logging import get_logger


logger = get_logger(__name__)

if "DIFFUSERS_TEST_DEVICE" in os.environ:
    torch_device = os.environ["DIFFUSERS_TEST_DEVICE"]
    try:
        # try creating device to see if provided device is valid
        _ = torch.device(torch_device)
    except RuntimeError as e:
        raise RuntimeError(
            f"Unknown testing device specified by environment variable `DIFFUSERS_TEST_DEVICE`: {torch_device}"
        ) from e
    logger.info(f"torch_device overrode to {torch_device}")
else:
    if torch.cuda.is_available():
        torch_device = "cuda"
    elif torch.xpu.is_available():
        torch_device = "xpu"
    elif is_torch_neuronx_available() and hasattr(torch, "neuron") and torch.neuron.is_available():
        torch_device = torch.neuron.current_device()
    else:
        torch_device = "cpu"
    is_torch_higher_equal_than_1_12 = version.parse(
        version.parse(torch.__version__).base_version
    ) >= version.parse("1.12")

    if is_torch_higher_equal_than_1_12:
        # Some builds of torch 1.12 don't have the mps backend registered. See #892 for more details
        mps_backend_registered = hasattr(torch.backends, "mps")
        torch_device = "mps" if (mps_backend_registered and torch.backends.mps.is_available()) else torch_device


class CaptureLogger:
    """
    Args:
    Context manager to capture `logging` streams
        logger: 'logging` logger object
    Returns:
        The captured output is available via `self.out`
    Example:
    ```python
    >>> from diffusers import logging
    >>> from diffusers.utils.testing_utils import CaptureLogger

    >>> msg = "Testing 1, 2, 3"
    >>> logging.set_verbosity_info()
    >>> logger = logging.get_logger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.py")
    >>> with CaptureLogger(logger) as cl:
    ...     logger.info(msg)
    >>> assert cl.out, msg + "\n"
    ```
    """

    def __init__(self, logger):
        self.logger = logger
        self.io = StringIO()
        self.sh = logging.StreamHandler(self.io)
        self.out = ""

    def __enter__(self):
        self.logger.addHandler(self.sh)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.sh)
        self.out = self.io.getvalue()

    def __repr__(self):
        return f"captured: {self.out}\n"

"""The LPIPS network (Zhang et al. 2018, arXiv:1801.03924) from local files only, for the `lpips` distance and the
fidelity-lpips metric (the `lpips` extra).

Its linear layers ship inside the `lpips` package; its backbone is torchvision's ImageNet weights, which `lpips`
would download and which are read here from the torch hub cache only (`LPIPSWeightsMissingError` says which file to
put where).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from adaptive_sampler._lazy import require_extra
from adaptive_sampler.errors import FieldError

# torchvision's ImageNet weights for the three LPIPS backbones (torchvision.models.*_Weights.IMAGENET1K_V1)
BACKBONE_WEIGHTS = {
    "alex": ("AlexNet", "alexnet", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("VGG16", "vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "squeeze": ("SqueezeNet 1.1", "squeezenet1_1", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
}


class LPIPSWeightsMissingError(FileNotFoundError):
    """A weights file LPIPS needs is not on disk; the message says which file and where to put it."""


def _lpips_package() -> Any:
    require_extra("lpips", "lpips", "LPIPS")
    import lpips

    return lpips


def backbone_weights_path(net: str) -> Path:
    """Where torchvision (and so `lpips`) keeps the backbone weights of `net`: the torch hub cache.

    Args:
        net: the backbone: alex, vgg or squeeze.
    """
    _, _, url = BACKBONE_WEIGHTS[net]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def linear_weights_path(net: str, version: str = "0.1") -> Path:
    """The LPIPS linear-layer weights shipped inside the `lpips` package.

    Args:
        net: the backbone: alex, vgg or squeeze.
        version: the LPIPS version.
    """
    return Path(_lpips_package().__file__).resolve().parent / "weights" / f"v{version}" / f"{net}.pth"


def build_lpips(net: str = "alex", *, random_backbone: bool = False) -> torch.nn.Module:
    """An `lpips.LPIPS` module (v0.1, eval mode, CPU) from local files only.

    Args:
        net: the backbone: alex, vgg or squeeze.
        random_backbone: an untrained backbone, for tests (its scores are not perceptual).
    """
    if net not in BACKBONE_WEIGHTS:
        raise FieldError("net", net, f"is not one of {', '.join(map(repr, BACKBONE_WEIGHTS))}")
    lpips = _lpips_package()
    title, builder, url = BACKBONE_WEIGHTS[net]
    backbone_file = backbone_weights_path(net)
    if not random_backbone and not backbone_file.is_file():
        raise LPIPSWeightsMissingError(
            f"lpips: the {title} backbone weights are missing: {backbone_file} does not exist. LPIPS needs "
            f"torchvision's ImageNet {title} weights in the torch hub checkpoints dir, and nothing is downloaded "
            f"here. On a machine with internet, download {url} (or run `python -c \"import torchvision; "
            f"torchvision.models.{builder}(weights='IMAGENET1K_V1')\"` and take it from "
            "~/.cache/torch/hub/checkpoints/), then copy it to that path; set TORCH_HOME to use another cache "
            "($TORCH_HOME/hub/checkpoints/). The LPIPS linear layers ship inside the lpips package "
            f"({linear_weights_path(net)}). For tests only, LPIPS(random_backbone=True) builds an untrained backbone."
        )
    lin_file = linear_weights_path(net)
    if not lin_file.is_file():
        raise LPIPSWeightsMissingError(
            f"lpips: the LPIPS linear-layer weights {lin_file} are missing from the lpips package; reinstall it "
            "(pip install --force-reinstall lpips)"
        )
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # torchvision's deprecation warnings for lpips' `pretrained=` argument
        torch.manual_seed(0)  # a random backbone is the same in every process
        model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    if not random_backbone:
        state = torch.load(backbone_file, map_location="cpu", weights_only=True)
        # lpips splits torchvision's `features.<i>` into `slice<j>.<i>`: map names back to the file's keys
        wanted = {name: re.sub(r"^slice\d+\.", "features.", name) for name in model.net.state_dict()}
        missing = [key for key in wanted.values() if key not in state]
        if missing:
            raise ValueError(f"lpips: {backbone_file} is not torchvision's {title} state dict (lacks {missing[:3]})")
        model.net.load_state_dict({name: state[key] for name, key in wanted.items()})
    lin_state = torch.load(lin_file, map_location="cpu", weights_only=True)
    model.lins.load_state_dict({re.sub(r"^lin(\d+)\.", r"\1.", k): v for k, v in lin_state.items()})
    return model.eval().requires_grad_(False)

"""Shared fixtures: a tiny randomly initialised UNet2DModel and the scheduler config it is sampled with.

The builders themselves live in helpers.py; import them from there (`from helpers import build_tiny_unet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from diffusers import UNet2DModel

from helpers import (
    build_tiny_unet,
    tiny_scheduler_config,
    write_tiny_class_unet_dir,
    write_tiny_model_dir,
    write_tiny_rgb_unet_dir,
    write_tiny_sd_dir,
)


@pytest.fixture(scope="session")
def tiny_unet() -> UNet2DModel:
    return build_tiny_unet()


@pytest.fixture(scope="session")
def tiny_rgb_unet() -> UNet2DModel:
    """`build_tiny_unet(channels=3)`: a 3-channel 8x8 UNet."""
    return build_tiny_unet(channels=3)


@pytest.fixture(scope="session")
def tiny_config() -> dict[str, Any]:
    return tiny_scheduler_config()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`build_tiny_unet()` as a diffusers folder (safetensors weights), for the command line."""
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion-layout folder (ε-prediction; `helpers.write_tiny_sd_dir`)."""
    return write_tiny_sd_dir(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_class_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class-conditional UNet folder, 10 classes (`helpers.write_tiny_class_unet_dir`)."""
    return write_tiny_class_unet_dir(tmp_path_factory.mktemp("tiny-class"))


@pytest.fixture(scope="session")
def tiny_rgb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3×48×48 pixel DDPM pipeline folder (`helpers.write_tiny_rgb_unet_dir`)."""
    return write_tiny_rgb_unet_dir(tmp_path_factory.mktemp("tiny-rgb"))

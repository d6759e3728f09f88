"""`adaptive-sampler stats`: reference statistics (pytorch-fid's .npz layout, `mu` and `sigma`) of a set of real
images in a metric back-end's feature space, for `eval --reference` and `tune --reference`."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field

from adaptive_sampler.cli.common import CliError, options_command
from adaptive_sampler.errors import FieldError
from adaptive_sampler.options import MAX_BATCH_SIZE, ModelOptions


class StatsOptions(BaseModel):
    """Every option of `adaptive-sampler stats`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path = Field(description="the .npz file to write (arrays mu (d) and sigma (d, d), float64)")
    images: Path | None = Field(None, description="a folder of image files (all one size; searched recursively)")
    npy: Path | None = Field(None, description=(
        ".npy array: float (n, C, H, W) in -1..1 (as sample --save writes) or uint8 0-255"))
    features: str = Field("embedded", description=(
        "feature space: embedded, inception:PATH (pytorch-fid weights file) or clip:PATH (transformers CLIP folder)"))
    batch_size: int = Field(50, ge=1, le=MAX_BATCH_SIZE, description="images per feature batch")
    device: str = Field("auto", description=ModelOptions.model_fields["device"].description)


@options_command(StatsOptions)
def stats_command(options: StatsOptions) -> None:
    """Reference statistics of real images: mean and covariance of their features, as pytorch-fid writes them."""
    from adaptive_sampler.cli.outputs import OutputPaths, _check_path

    out, images, npy, features, batch_size = (options.out, options.images, options.npy, options.features,
                                              options.batch_size)
    if (images is None) == (npy is None):
        raise CliError("--images, --npy: give exactly one of them (a folder of images or a .npy array)")
    if out.suffix != ".npz":
        raise FieldError("out", str(out), "must end in .npz (pytorch-fid's statistics layout)")
    outputs = OutputPaths({"out": _check_path("out", out)})  # before any work; written all-or-nothing

    import torch
    from tqdm.auto import tqdm

    from adaptive_sampler.metrics.backends import make_backend
    from adaptive_sampler.metrics.image_files import image_folder, npy_images
    from adaptive_sampler.metrics.scoring import check_fid_n
    from adaptive_sampler.metrics.statistics import FeatureStatistics
    from adaptive_sampler.models import resolve_device

    torch_device = resolve_device(options.device)
    field = "images" if images is not None else "npy"
    image_set = image_folder(images) if images is not None else npy_images(npy)  # type: ignore[arg-type]
    backend = make_backend(features, device=torch_device)
    if backend.feature_extractor is None:
        raise FieldError("features", features, "has no feature space; stats needs embedded, inception:PATH or "
                                               "clip:PATH")
    backend.check_shape(image_set.shape)
    check_fid_n(backend, image_set.n, field=field)
    parts = [backend.feature_extractor(batch.to(torch_device)).cpu()
             for batch in tqdm(image_set.batches(batch_size), total=-(-image_set.n // batch_size), desc="features",
                               unit="batch")]
    stats = FeatureStatistics.from_features(torch.cat(parts))
    outputs.write({"out": stats.npz_bytes()})
    typer.echo(f"{out}: mu [{stats.dim}], sigma [{stats.dim}, {stats.dim}] of {image_set.n} images "
               f"{image_set.shape} from {image_set.source} in the {backend.spec} feature space")

"""Metric back-ends as plug-ins: one interface over the feature spaces and per-sample scorers that `eval`, `tune
--objective` and the benchmarks use, named by a spec (`--features`; the specs are `BACKEND_SPECS`, described in
docs/guides/evaluation.md). A `MetricBackend` may have a feature space (`feature_extractor`, where FID/KID live
against reference statistics) and may score each sample (`per_sample`). Bad specs and files raise FieldError naming
`features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.clip import ClipFeatureExtractor, LocalClip
from adaptive_sampler.metrics.feature_net import EMBEDDED_IMAGE_SHAPE, Space
from adaptive_sampler.metrics.features import (
    FID_INCEPTION_FILENAME,
    FID_INCEPTION_URL,
    EmbeddedFeatureExtractor,
    FeatureExtractor,
    InceptionFeatureExtractor,
    load_embedded_feature_net,
)
from adaptive_sampler.metrics.fidelity import fidelity_per_sample

BACKEND_SPECS = ("embedded", "heldout", "inception:PATH", "clip:PATH", "fidelity", "fidelity:lpips[:alex|vgg|squeeze]",
                 "label", "label:heldout")


@dataclass(frozen=True)
class ScoringBatch:
    """Images [n, C, H, W] in [-1, 1] and, where the run has them, each sample's prompt, class label and many-step
    reference image of the same noise and prompt."""

    images: torch.Tensor
    prompts: Sequence[str] | None = None
    labels: Sequence[int] | None = None
    reference_images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise FieldError("images", tuple(self.images.shape), "is its shape; it must be [n, C, H, W]")
        n = len(self.images)
        for name, given in (("prompts", self.prompts), ("labels", self.labels), ("reference_images",
                                                                                 self.reference_images)):
            if given is not None and len(given) != n:
                raise FieldError(name, len(given), f"entries were given for {n} images; give one per image")


class MetricBackend:
    """A feature space and/or per-sample scores (`metric_names`); subclasses set what they have."""

    spec: str
    feature_extractor: FeatureExtractor | None = None
    metric_names: tuple[str, ...] = ()
    needs_reference_images: ClassVar[bool] = False

    @property
    def dim(self) -> int | None:
        """The feature dimension, or None without a feature space."""
        return self.feature_extractor.dim if self.feature_extractor is not None else None

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        """Raise FieldError (naming `features`) if images of `sample_shape` (C, H, W) cannot be scored."""
        if len(sample_shape) != 3:
            raise FieldError("features", self.spec, f"cannot score samples of shape {tuple(sample_shape)}; it "
                                                    "takes images (C, H, W)")

    def per_sample(self, batch: ScoringBatch) -> dict[str, torch.Tensor]:
        """Scores per sample [n] (float64, CPU) by metric name; default: none."""
        return {}


def _check_channels(spec: str, sample_shape: Sequence[int]) -> None:
    if len(sample_shape) != 3 or sample_shape[0] not in (1, 3):
        raise FieldError("features", spec, f"takes grayscale or RGB images (1 or 3, H, W); these samples are "
                                           f"{tuple(sample_shape)}")


def _check_embedded_shape(spec: str, sample_shape: Sequence[int]) -> None:
    if tuple(sample_shape) != EMBEDDED_IMAGE_SHAPE:
        raise FieldError("features", spec, f"scores with the embedded Fashion-MNIST classifier, which takes "
                                           f"{EMBEDDED_IMAGE_SHAPE}; these samples are {tuple(sample_shape)} (use "
                                           "inception:PATH or clip:PATH for other images, fidelity for any model)")


class EmbeddedBackend(MetricBackend):
    """A shipped Fashion-MNIST classifier's features, `embedded` (the searched space) or `heldout` (the held-out
    one, which no search objective takes); the references are shipped too (`scoring.embedded_reference`)."""

    def __init__(self, device: torch.device | str | None = None, space: Space = "searched") -> None:
        self.spec = "embedded" if space == "searched" else space
        self.space = space
        self.feature_extractor = EmbeddedFeatureExtractor(device=device, space=space)

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        _check_embedded_shape(self.spec, sample_shape)


class InceptionBackend(MetricBackend):
    """pytorch-fid's FID InceptionV3 from a local weights file (clean-fid preprocessing)."""

    def __init__(self, path: Path, device: torch.device | str | None = None) -> None:
        self.spec = f"inception:{path}"
        if not path.is_file():
            raise FieldError("features", self.spec, f"names {str(path)!r}, which does not exist. The FID Inception "
                             f"weights are pytorch-fid's {FID_INCEPTION_FILENAME} from {FID_INCEPTION_URL}; download "
                             "it on a machine with internet and copy it here (nothing is downloaded)")
        try:
            self.feature_extractor = InceptionFeatureExtractor(path, device=device)
        except FieldError as exc:
            raise FieldError("features", self.spec, exc.rule) from None
        except Exception as exc:  # torch.load of a file that is no state dict: pickle, zip or EOF errors
            rule = f"could not be read as a state dict of the FID InceptionV3 ({FID_INCEPTION_FILENAME})"
            raise FieldError("features", self.spec, f"{rule}: {type(exc).__name__}: {exc}") from None

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        _check_channels(self.spec, sample_shape)


class ClipBackend(MetricBackend):
    """CLIP image features for FID and, where prompts are given, the CLIP score of each image against its prompt."""

    metric_names = ("clip_score",)

    def __init__(self, path: Path, device: torch.device | str | None = None) -> None:
        self.spec = f"clip:{path}"
        self.clip = LocalClip(path, device=device)
        self.feature_extractor = ClipFeatureExtractor(self.clip)

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        _check_channels(self.spec, sample_shape)

    def per_sample(self, batch: ScoringBatch) -> dict[str, torch.Tensor]:
        if batch.prompts is None:
            return {}
        return {"clip_score": self.clip.clip_score(batch.images, batch.prompts).double()}


class FidelityBackend(MetricBackend):
    """PSNR, SSIM and optionally LPIPS of each sample to its many-step reference (same noise and prompt)."""

    needs_reference_images = True

    def __init__(self, lpips_net: str | None = None) -> None:
        self.spec = "fidelity" if lpips_net is None else f"fidelity:lpips:{lpips_net}"
        self.metric_names = ("psnr", "ssim") if lpips_net is None else ("psnr", "ssim", "lpips")
        self.lpips_model = None
        if lpips_net is not None:
            from adaptive_sampler.monitors.lpips_distance import LPIPSWeightsMissingError, build_lpips

            try:
                self.lpips_model = build_lpips(lpips_net)
            except LPIPSWeightsMissingError as exc:
                raise FieldError("features", self.spec, str(exc).removeprefix("lpips: ")) from None
            except FieldError as exc:
                raise FieldError("features", self.spec, f"names the LPIPS network {exc.value!r}, which {exc.rule}"
                                 ) from None

    def per_sample(self, batch: ScoringBatch) -> dict[str, torch.Tensor]:
        if batch.reference_images is None:
            raise FieldError("features", self.spec, "scores against the many-step reference of the same noise, "
                                                    "which this run did not compute")
        return fidelity_per_sample(batch.images, batch.reference_images, self.lpips_model)


class LabelBackend(MetricBackend):
    """Whether an embedded Fashion-MNIST classifier (the searched space's, or with `label:heldout` the held-out
    one's) puts each sample in the class it was asked for."""

    metric_names = ("label_agreement",)

    def __init__(self, device: torch.device | str | None = None, space: Space = "searched") -> None:
        self.spec = "label" if space == "searched" else f"label:{space}"
        self.device = torch.device(device) if device is not None else None
        self.classifier = load_embedded_feature_net(space)

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        _check_embedded_shape(self.spec, sample_shape)

    def per_sample(self, batch: ScoringBatch) -> dict[str, torch.Tensor]:
        if batch.labels is None:
            raise FieldError("features", self.spec, "needs the class label of every sample; sample a "
                                                    "class-conditional model with class labels")
        labels = torch.as_tensor(list(batch.labels), dtype=torch.long)
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < 10):
            raise FieldError("labels", [int(v) for v in labels if not 0 <= v < 10][:3],
                             "are outside the embedded classifier's classes 0-9")
        device = self.device or batch.images.device
        self.classifier.to(device)
        with torch.inference_mode():
            predicted = torch.cat([self.classifier(batch.images[i : i + 1000].to(device, torch.float32)).argmax(1)
                                   for i in range(0, len(batch.images), 1000)])
        return {"label_agreement": (predicted.cpu() == labels).double()}


def make_backend(spec: str, device: torch.device | str | None = None) -> MetricBackend:
    """The back-end a spec names.

    Args:
        spec: one of `BACKEND_SPECS`, its PATH or NET filled in.
        device: where its network runs.
    """
    name, _, arg = spec.partition(":")
    if spec in ("embedded", "heldout"):
        return EmbeddedBackend(device, "searched" if spec == "embedded" else "heldout")
    if spec in ("label", "label:heldout"):
        return LabelBackend(device, "searched" if spec == "label" else "heldout")
    if spec == "fidelity":
        return FidelityBackend()
    if name in ("inception", "clip") and arg:
        path = Path(arg).expanduser()
        return InceptionBackend(path, device) if name == "inception" else ClipBackend(path, device)
    if name == "fidelity":
        part, _, net = arg.partition(":")
        if part == "lpips":
            return FidelityBackend(net or "alex")
    raise FieldError("features", spec, f"is not a metric back-end; use one of {', '.join(BACKEND_SPECS)}")

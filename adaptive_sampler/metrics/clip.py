"""CLIP from a local transformers folder: the CLIP score of images against their prompts, and image features for FID.

The folder is what `CLIPModel` and `CLIPProcessor.save_pretrained` write (safetensors weights only); nothing is
downloaded. The CLIP score is 100 · max(cos(E_image, E_text), 0) (Hessel et al. 2021, arXiv:2104.08718, torchmetrics'
weight); the FID features are the unnormalised projected image embeddings, as clean-fid's. Images are quantised to 8
bits (as a PNG holds them), then prepared by the folder's own image processor, as CLIP was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.resize import check_images, quantize_uint8, to_rgb


def _transformers(field: str, spec: str) -> Any:
    try:
        import transformers
    except ImportError:  # an optional dependency: only CLIP (and Stable Diffusion folders) need it
        raise FieldError(field, spec, "needs the `transformers` package: pip install transformers") from None
    return transformers


class LocalClip:
    """A CLIP model, image processor and tokenizer read from `folder` (`field` names it in errors); computed on
    `device` (default: the images') for images [n, 1 or 3, H, W] in [-1, 1]."""

    def __init__(self, folder: Path | str, device: torch.device | str | None = None, batch_size: int = 64,
                 field: str = "features") -> None:
        folder = Path(folder)
        spec = f"clip:{folder}"
        if not folder.is_dir():
            raise FieldError(field, spec, f"names {str(folder)!r}, which is not a folder; give a local transformers "
                                          "CLIP folder (CLIPModel.save_pretrained + CLIPProcessor.save_pretrained)")
        missing = [] if (folder / "config.json").is_file() else ["config.json"]
        if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
            missing.append("preprocessor_config.json (or processor_config.json)")
        if not any(folder.glob("*.safetensors")):
            missing.append("model.safetensors")
        if missing:
            raise FieldError(field, spec, f"lacks {', '.join(missing)}; a CLIP folder holds what CLIPModel and "
                                          "CLIPProcessor save_pretrained write (safetensors weights only)")
        if batch_size < 1:
            raise FieldError("batch_size", batch_size, "is not a positive integer")
        transformers = _transformers(field, spec)
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # a weights-loading bar per run would clutter the CLI
        try:
            self.model = transformers.CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
            self.processor = transformers.CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FieldError(field, spec, f"could not be read as a CLIP folder: {' '.join(str(exc).split())}") from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        self.model.eval().requires_grad_(False)
        self.dim: int = int(self.model.config.projection_dim)
        self.max_tokens: int = int(self.model.config.text_config.max_position_embeddings)
        self.device = torch.device(device) if device is not None else None
        self.batch_size = batch_size

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        values = to_rgb(quantize_uint8(images)).to("cpu", torch.uint8)
        arrays = [image.permute(1, 2, 0).numpy() for image in values]  # HWC uint8, as a PNG reads back
        return self.processor(images=arrays, return_tensors="pt")["pixel_values"]

    def _image_embeds(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        pixels = self._pixels(images).to(device, self.model.dtype)
        # spelled out: get_image_features returns a tensor in transformers 4 and an output object in 5
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output).float()

    def _text_embeds(self, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(device)
        pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                       attention_mask=tokens["attention_mask"]).pooler_output
        return self.model.text_projection(pooled).float()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Projected CLIP image embeddings [n, dim] (float32, on the images' device), the CLIP FID space."""
        check_images(images)
        device = self.device or images.device
        self.model.to(device)
        with torch.inference_mode():
            return torch.cat([self._image_embeds(images[i : i + self.batch_size], device).to(images.device)
                              for i in range(0, len(images), self.batch_size)])

    def clip_score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """100 · max(cos(image, prompt), 0) per sample [n] (float32, CPU); prompt i belongs to image i."""
        check_images(images)
        if len(prompts) != len(images):
            raise FieldError("prompts", len(prompts), f"prompts were given for {len(images)} images; give one per "
                                                      "image")
        device = self.device or images.device
        self.model.to(device)
        scores = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                image = self._image_embeds(images[i : i + self.batch_size], device)
                text = self._text_embeds(prompts[i : i + self.batch_size], device)
                cos = torch.nn.functional.cosine_similarity(image, text, dim=1)
                scores.append((100 * cos.clamp(min=0)).cpu())
        return torch.cat(scores)


class ClipFeatureExtractor:
    """A `FeatureExtractor` over `LocalClip.image_features` (the CLIP FID space)."""

    def __init__(self, clip: LocalClip) -> None:
        self.clip = clip
        self.dim = clip.dim
        self.batch_size = clip.batch_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.image_features(images)

"""Weights of the right format for the metric back-ends, made inside the tests (nothing is downloaded): random
values in the real files' layouts. Scores computed with them check the plumbing, not perceptual quality."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers import write_tiny_clip_tokenizer

CLIP_WORDS = ("a", "photo", "of", "shirt", "shoe", "bag", "dress")


def write_random_fid_inception(path: Path, seed: int = 0) -> Path:
    """A random-valued state dict of pytorch-fid's FID InceptionV3 (the key names and shapes of
    pt_inception-2015-12-05-6726825d.pth: torchvision's Inception3 with 1008 classes, no aux head), saved with
    torch.save as that file is."""
    from adaptive_sampler.metrics import build_fid_inception_v3

    torch.manual_seed(seed)
    net = build_fid_inception_v3()
    for name, tensor in net.state_dict().items():
        if name.endswith("running_var"):
            tensor.uniform_(0.5, 1.5)  # a BatchNorm's variance must be positive
        elif tensor.is_floating_point() and not name.endswith("running_mean"):
            tensor.normal_(0, 0.1)
    torch.save(net.state_dict(), path)
    return path


def write_tiny_clip_dir(folder: Path, projection_dim: int = 4, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny random CLIPModel (built from a CLIPConfig) with its CLIPProcessor: a CLIP image processor and a BPE
    CLIPTokenizer over `CLIP_WORDS` (letters, word-final letters and the merges that build each word), all saved
    with save_pretrained into `folder` as a real CLIP folder is."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_clip_tokenizer(folder, words=CLIP_WORDS)
    vocab = json.loads((folder / "vocab.json").read_text())
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 8},
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder

"""`vitlab zeroshot`: classify image files with free-text class names through a CLIP model.

A CLIP is loaded from a vitlab CLIP run (its config.json + clip.json: model, preprocessing, tokenizer; weights from
best/, else last/) or from a registered CLIP model name (e.g. `crate_alpha_clipa_l14`) with a weight file, or else
its published weights (downloaded once); its pretrained_cfg gives the preprocessing and the tokenizer, whose
vocabulary is read from local files.
Each image is resized (short side) and centre-cropped to the model's input size, normalised, and scored against
`template.format(name)` prompts averaged per class (`vitlab.train.zero_shot_classifier`); probabilities are the
softmax of 100 × cosine similarity, CLIP's zero-shot scale.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import load_checkpoint
from ..data import DataConfig, create_transform, load_image, resolve_data_config
from ..data.templates import DEFAULT_TEMPLATES_FILE, read_templates
from ..models import create_model, get_pretrained_cfg, is_model
from ..text import load_text_tokenizer
from ..train import config_from_dict, zero_shot_classifier
from ..train.tasks.clip import CLIP_ASSET, load_run_tokenizer
from ..train.checkpoint import resolve_checkpoint

__all__ = ["ClipBundle", "load_clip", "load_clip_images", "zero_shot_predict"]


@dataclass
class ClipBundle:
    """A CLIP model in eval mode with what it needs to read images and text."""
    model: nn.Module
    tokenizer: object
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    image_size: int
    templates: list[str]  # the run's zero-shot templates (its held-out ones), else vitlab's default file
    label: str

    @property
    def data_config(self) -> DataConfig:
        """How `vitlab zeroshot` prepares images for this CLIP: short side to image_size (bicubic), the centre at
        whole-pixel offsets (`crop_mode="resize_crop"`), the bundle's mean / std."""
        return resolve_data_config(input_size=(self.in_chans, self.image_size, self.image_size), mean=self.mean,
                                   std=self.std, interpolation="bicubic", crop_pct=1.0, crop_mode="resize_crop")


def _from_run(run: str | os.PathLike) -> ClipBundle:
    weights, run_dir = resolve_checkpoint(run)
    config_file, meta_file = run_dir / "config.json", run_dir / CLIP_ASSET
    if not config_file.is_file() or not meta_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a vitlab CLIP run (needs config.json and {CLIP_ASSET}); pass a "
                                "run directory, or a registered CLIP model name such as crate_alpha_clipa_l14")
    config = config_from_dict(json.loads(config_file.read_text())["config"])
    meta = json.loads(meta_file.read_text())
    tokenizer = load_run_tokenizer(run_dir, meta)
    kwargs = dict(config.model_kwargs)
    image_kwargs = {"img_size": meta["image_size"], "in_chans": meta["in_chans"], **kwargs.get("image_kwargs", {})}
    text_kwargs = dict(kwargs.get("text_kwargs", {}))
    if meta.get("tokenizer_dir"):
        text_kwargs.setdefault("vocab_size", tokenizer.vocab_size)
    model = create_model(config.model, **{**kwargs, "image_kwargs": image_kwargs, "text_kwargs": text_kwargs})
    load_checkpoint(model, weights)
    return ClipBundle(model.eval(), tokenizer, tuple(meta["mean"]), tuple(meta["std"]), meta["in_chans"],
                      meta["image_size"], list(meta.get("templates") or read_templates(DEFAULT_TEMPLATES_FILE)),
                      f"{run_dir.name} ({weights.parent.name}/)")


def _from_name(name: str, checkpoint: str | None, tokenizer_path: str | None) -> ClipBundle:
    cfg = get_pretrained_cfg(name)
    if cfg.get("task") != "clip":
        raise ValueError(f"{name!r} is not a CLIP model (its pretrained_cfg task is {cfg.get('task')!r})")
    if "tokenizer" not in cfg:
        raise ValueError(f"{name!r} names no tokenizer in its pretrained_cfg: classify with a trained run directory")
    # no weight file: the published weights (downloaded once, as create_model(pretrained=True))
    model = create_model(name, checkpoint_path=checkpoint) if checkpoint else create_model(name, pretrained=True)
    tokenizer = load_text_tokenizer(cfg["tokenizer"], tokenizer_path, context_length=cfg.get("context_length"))
    in_chans, size = model.pretrained_cfg["input_size"][0], model.pretrained_cfg["input_size"][-1]
    label = f"{name} ({Path(checkpoint).name if checkpoint else Path(model.pretrained_cfg['url']).name})"
    return ClipBundle(model.eval(), tokenizer, tuple(cfg["mean"]), tuple(cfg["std"]), in_chans, size,
                      read_templates(DEFAULT_TEMPLATES_FILE), label)


def load_clip(source: str, checkpoint: str | None = None, tokenizer_path: str | None = None) -> ClipBundle:
    """A CLIP from a run directory (or a checkpoint inside one), or from a registered CLIP model name with an
    optional weight file (`checkpoint`)."""
    if Path(source).exists():
        if checkpoint:
            raise ValueError("--checkpoint goes with a model name; a run directory brings its own weights")
        return _from_run(source)
    if is_model(source):
        return _from_name(source, checkpoint, tokenizer_path)
    raise FileNotFoundError(f"{source!r} is neither a run directory nor a registered model name")


def load_clip_images(paths: Sequence[str | os.PathLike], bundle: ClipBundle) -> torch.Tensor:
    """Normalised float images (N, C, S, S): short side resized to S (bicubic), centre crop (`bundle.data_config`
    through `vitlab.data.create_transform`)."""
    transform, out = None, []
    for path in paths:
        image = load_image(path)  # read first: a bad file is named before anything else is looked at
        transform = transform or create_transform(bundle.data_config)
        out.append(transform(image))  # (C, S, S)
    return torch.stack(out)


@torch.no_grad()
def zero_shot_predict(bundle: ClipBundle, paths: Sequence[str | os.PathLike], class_names: Sequence[str],
                      templates: Sequence[str] | None = None) -> torch.Tensor:
    """(N, K) probabilities of each class name for each image."""
    if not class_names:
        raise ValueError("give at least one class name (--classes a,b,c)")
    classifier = zero_shot_classifier(bundle.model, list(class_names), list(templates or bundle.templates),
                                      bundle.tokenizer)  # (D, K)
    features = F.normalize(bundle.model.encode_image(load_clip_images(paths, bundle)).float(), dim=-1)  # (N, D)
    return (100.0 * features @ classifier).softmax(dim=-1)

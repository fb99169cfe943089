"""`create_model(..., pretrained=True)`: fetch the file named by the model's pretrained_cfg into the cache and load
it through the converters."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .._download import cache_dir, download
from ..convert import load_checkpoint

__all__ = ["load_pretrained"]


def load_pretrained(model: nn.Module, checkpoint_path: str | None = None) -> nn.Module:
    """Loads `checkpoint_path`, or else the cfg's `file` (a local path) or `url` (downloaded once). A model built
    with a different number of classes than the weights keeps its own fresh head (timm behaviour)."""
    cfg = getattr(model, "pretrained_cfg", {})
    layout = cfg.get("file_layout", "auto")
    if checkpoint_path is not None:
        path, layout = Path(checkpoint_path), "auto"
    elif cfg.get("file"):
        path = Path(cfg["file"])
    elif cfg.get("url"):
        url = cfg["url"]
        name = cfg.get("cache_name") or url.rsplit("/", 1)[-1]  # cache_name when several URLs share a file name
        path = download(url, cache_dir() / "weights" / name, sha256=cfg.get("sha256"))
    else:
        raise ValueError(f"no pretrained weights are published for {cfg.get('architecture', type(model).__name__)}; "
                         "pass checkpoint_path=... (our safetensors, a timm ViT state dict, an official CRATE / "
                         "CRATE-α .pth, a Hugging Face GPT-2 file or a nanoGPT ckpt.pt)")
    num_classes = getattr(model, "num_classes", None)  # language models have none
    skip_head = checkpoint_path is None and num_classes != cfg.get("num_classes", num_classes)
    return load_checkpoint(model, path, layout=layout, skip_head=skip_head)

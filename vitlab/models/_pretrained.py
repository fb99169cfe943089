"""`create_model(..., pretrained=True)`: fetch the file named by the model's pretrained_cfg into the cache, verify
it, and load it (`vitlab.models.weights.load_checkpoint`, official layouts through vitlab.convert's key maps).

Verification: a cfg's `sha256` (the published file's digest) is checked after download and on every load from the
cache; a mismatch deletes the file and raises `ChecksumError` naming the URL, the expected and the actual digest.
The official CRATE / CRATE-α / GPT-2 files could not be downloaded where this was written, so their digests are
not registered (`sha256` None): such a file is loaded with a warning saying it is unverified, and the digest
computed at its first download is recorded beside it (`<file>.sha256`) and checked on every later load, which
catches a cache corrupted afterwards."""
from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from .._download import ChecksumError, cache_dir, download, sha256sum
from .weights import load_checkpoint

__all__ = ["load_pretrained", "fetch_weights"]


def fetch_weights(url: str, path: Path, sha256: str | None = None) -> Path:
    """Downloads `url` to `path` once and returns it verified: against `sha256` when registered, else against the
    digest recorded at its first download in `<path>.sha256` (written then, with a warning that the file itself is
    unverified)."""
    path = Path(path)
    recorded = path.with_name(path.name + ".sha256")
    if sha256 is not None:
        return download(url, path, sha256=sha256)
    if path.is_file() and recorded.is_file():
        expected = recorded.read_text().split()[0]
        if (actual := sha256sum(path)) != expected:
            path.unlink()
            recorded.unlink()
            raise ChecksumError(f"cached {path} (from {url}) has sha256 {actual}, but {expected} was recorded at its "
                                "first download: the cache is corrupt; it was removed, load again to re-download")
    path = download(url, path)
    digest = recorded.read_text().split()[0] if recorded.is_file() else sha256sum(path)
    if not recorded.is_file():
        recorded.write_text(f"{digest}  {path.name}\n")
    warnings.warn(f"{url}: no sha256 is registered for these weights, so the download itself is unverified; its "
                  f"digest at first download ({digest}) is recorded in {recorded} and checked on every load",
                  stacklevel=3)
    return path


def load_pretrained(model: nn.Module, checkpoint_path: str | None = None) -> nn.Module:
    """Loads `checkpoint_path`, or else the cfg's `file` (a local path) or `url` (downloaded once, verified against
    the cfg's `sha256` or the digest recorded at first download). A model built with a different number of classes
    than the weights keeps its own fresh head, and one built at another image size gets the position table resampled
    (timm behaviour)."""
    cfg = getattr(model, "pretrained_cfg", {})
    layout = cfg.get("file_layout", "auto")
    if checkpoint_path is not None:
        path, layout = Path(checkpoint_path), "auto"
    elif cfg.get("file"):
        path = Path(cfg["file"])
    elif cfg.get("url"):
        url = cfg["url"]
        name = cfg.get("cache_name") or url.rsplit("/", 1)[-1]  # cache_name when several URLs share a file name
        path = fetch_weights(url, cache_dir() / "weights" / name, sha256=cfg.get("sha256"))
    else:
        raise ValueError(f"no pretrained weights are published for {cfg.get('architecture', type(model).__name__)}; "
                         "pass a weight file: checkpoint=FILE (vitlab train), --checkpoint FILE (vitlab zeroshot), "
                         "checkpoint_path=FILE in Python (our safetensors, a timm ViT state dict, an official CRATE / "
                         "CRATE-α .pth, a Hugging Face GPT-2 file or a nanoGPT ckpt.pt)")
    num_classes = getattr(model, "num_classes", None)  # language models have none
    skip_head = checkpoint_path is None and num_classes != cfg.get("num_classes", num_classes)
    # adapt: a model built at another image or patch size gets the position grid / stem kernel resampled (timm)
    return load_checkpoint(model, path, layout=layout, skip_head=skip_head, adapt=True)

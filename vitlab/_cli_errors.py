"""Turning an exception into the one-line message `vitlab` prints (`vitlab: error: ...`), or None for a bug.

User errors: what vitlab raises on purpose (its own exception classes, and ValueError / TypeError / OSError /
RuntimeError / ImportError with a message written for the user), failed downloads, and a CUDA device asked for on a
machine without one. Anything else is a bug and keeps its traceback. Standard library only at import time."""
from __future__ import annotations

import argparse
import sys
import traceback

__all__ = ["describe_error", "cuda_unavailable_reason", "check_device"]

_USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


def cuda_unavailable_reason() -> str | None:
    """None when torch sees a GPU, else why not (torch built without CUDA, or no GPU visible)."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"


def check_device(device: object) -> None:
    """Raises a ValueError saying what to pass instead when `device` names CUDA and there is none (torch would fail
    later, deep inside, with an assertion or a missing attribute)."""
    if device is None or not str(device).startswith("cuda"):
        return
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise ValueError(f"device={device} needs a CUDA GPU, but {reason}; use device=cpu (or device=auto, which "
                         "takes the GPU when there is one)")


def _mentions_cuda(err: BaseException) -> bool:
    if "cuda" in str(err).lower():
        return True
    return any("/torch/cuda/" in frame.filename.replace("\\", "/") for frame in traceback.extract_tb(err.__traceback__))


def _cuda_message(err: BaseException) -> str | None:
    """The CUDA-unavailable message when `err` came from asking torch for a GPU it does not have."""
    if "torch" not in sys.modules or not _mentions_cuda(err):
        return None
    reason = cuda_unavailable_reason()
    if reason is None:
        return None
    return (f"this command asks for a CUDA device, but {reason}; pass device=cpu (train / eval: a key=value "
            "override; generate / profile: --device cpu), or device=auto")


def describe_error(err: BaseException, args: argparse.Namespace | None = None) -> tuple[str, int] | None:
    """(message, exit code) for a user-facing error; None for a bug (the caller re-raises it)."""
    if isinstance(err, (AssertionError, AttributeError, RuntimeError)) and (cuda := _cuda_message(err)):
        return cuda, 2
    from urllib.error import URLError

    if isinstance(err, URLError):  # vitlab's downloads wrap these; this catches any other network read
        return f"network error: {err.reason}", 2
    if isinstance(err, KeyError) and type(err).__module__.startswith("vitlab"):
        return str(err), 2  # e.g. an unknown dataset: the message lists the valid names
    if isinstance(err, RuntimeError):  # e.g. TrainingDiverged: the message says what happened and what to try
        return f"{type(err).__name__}: {err}", 3
    if isinstance(err, _USER_ERRORS) or type(err).__module__.startswith("vitlab"):
        return str(err) or type(err).__name__, 2
    return None

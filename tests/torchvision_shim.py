"""Makes timm and transformers importable against the CPU torch (tests and benchmarks only; never the library).

The torchvision wheel on PyPI for torch 2.13 is a CUDA build whose compiled ops do not load against the CPU torch;
its import then fails while registering fake kernels for `torchvision::nms` / `qnms`. Declaring those two operator
schemas first lets it import (the ops are never called)."""
import sys

import torch


def import_torchvision() -> None:
    try:
        import torchvision  # noqa: F401  (a matching build imports as is)
        return
    except ImportError:
        return  # not installed: tests that need timm / transformers skip themselves
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)
    import torchvision  # noqa: F401


_KEEP: list = []

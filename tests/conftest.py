"""Test setup: the torchvision shim (tests/torchvision_shim.py) so that timm and transformers import; the library
itself never imports torchvision, timm or transformers."""
import pytest
import torch

from torchvision_shim import import_torchvision

import_torchvision()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield

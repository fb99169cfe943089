"""Model zoo: ViT, CRATE and CRATE-α on one skeleton, registered with timm semantics."""
from ._base import ImageTransformer
from ._registry import create_model, get_pretrained_cfg, is_model, list_models, register_model, resolve_model_name
from .crate import CRATE, CrateBlock
from .crate_alpha import CRATEAlpha
from .vit import VisionTransformer

__all__ = ["ImageTransformer", "VisionTransformer", "CRATE", "CRATEAlpha", "CrateBlock", "create_model",
           "list_models", "register_model", "is_model", "resolve_model_name", "get_pretrained_cfg"]

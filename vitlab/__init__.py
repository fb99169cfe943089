"""vitlab: vision transformers you can read — ViT, CRATE, CRATE-α and mimetic initialization."""
from .models import create_model, get_pretrained_cfg, is_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "is_model", "get_pretrained_cfg", "__version__"]

"""vitlab: transformers you can read — ViT, CRATE, CRATE-α, their causal language models beside GPT-2, and mimetic
initialization."""
from .convert import CheckpointMismatchError, load_checkpoint
from .init import UnsupportedAttentionError, mimetic_init_, norm_matched_init_
from .models import create_model, get_pretrained_cfg, is_model, list_models, register_model
from ._profile import Profile, count_flops, profile

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "is_model", "get_pretrained_cfg", "mimetic_init_",
           "norm_matched_init_", "UnsupportedAttentionError", "load_checkpoint", "CheckpointMismatchError",
           "profile", "Profile", "count_flops", "__version__"]

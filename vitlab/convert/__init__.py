"""Loading weights: our safetensors files, timm ViT state dicts, the official CRATE / CRATE-α layouts, Hugging Face
ViT, and GPT-2 (Hugging Face and nanoGPT). The official layouts' key maps live here (`official`); reading files and
the strict loader are vitlab.models.weights, re-exported here as the public loading API."""
from ..models.adapt import adapt_input_conv
from ..models.weights import (CheckpointMismatchError, convert_state_dict, load_checkpoint, read_weights,
                              resolve_weights_path, unwrap_state_dict)
from .official import LAYOUTS, detect_layout

__all__ = ["CheckpointMismatchError", "load_checkpoint", "read_weights", "unwrap_state_dict", "convert_state_dict",
           "detect_layout", "LAYOUTS", "adapt_input_conv", "resolve_weights_path"]

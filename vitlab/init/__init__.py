"""Initialisations: mimetic initialization of self-attention (Trockman & Kolter 2023) and its norm-matched
baseline, for vitlab, timm, Hugging Face and torch.nn attention layers (see docs/mimetic.md). Importing it registers
'mimetic' with vitlab.models, so `create_model(..., init="mimetic")` calls `mimetic_init_`."""
from ..models import register_init
from ._adapters import SUPPORTED_LAYOUTS, AttentionView, UnsupportedAttentionError, find_attention_layers
from .mimetic import (balanced_factors, mimetic_init_, mimetic_noise, mimetic_target, norm_matched_init_,
                      psd_factor)

__all__ = ["mimetic_init_", "norm_matched_init_", "UnsupportedAttentionError", "SUPPORTED_LAYOUTS",
           "AttentionView", "find_attention_layers", "mimetic_noise", "mimetic_target", "balanced_factors",
           "psd_factor"]

register_init("mimetic", mimetic_init_)

"""Model zoo: ViT, CRATE and CRATE-α on one image skeleton; GPT-2 and causal CRATE / CRATE-α language models on
one language-model skeleton; all registered with timm semantics."""
from ._base import ImageTransformer
from ._contract import TransformerBlocks, get_blocks
from ._features import FeatureGetterNet, FeatureInfo
from ._hub import (METADATA_KEY, WeightSource, describe_architecture, from_pretrained, load, model_spec, push_to_hub,
                   read_spec, resolve_source, save_pretrained, shape_kwargs)
from ._layers import resample_position_embedding
from ._lm_base import CausalLM
from ._registry import (check_model_size, create_model, get_pretrained_cfg, has_pretrained_weights, is_model,
                        list_models, register_init, register_model, resolve_model_name, short_alias)
from .crate import CRATE, CrateBlock
from .crate_alpha import CRATEAlpha
from .crate_lm import CRATEAlphaLM, CRATELM
from .gpt import GPT
from .vit import VisionTransformer
from .weight_init import trunc_normal_
from .segmentation import SegmentationModel, create_segmentation_model
from .clip import CLIP, TextTransformer, create_clip_model

__all__ = ["TransformerBlocks", "get_blocks", "ImageTransformer", "VisionTransformer", "CRATE", "CRATEAlpha",
           "CrateBlock", "CausalLM", "GPT", "CRATELM", "CRATEAlphaLM", "create_model", "list_models", "register_model",
           "is_model", "resolve_model_name", "get_pretrained_cfg", "has_pretrained_weights",
           "resample_position_embedding", "SegmentationModel", "create_segmentation_model", "CLIP", "TextTransformer",
           "create_clip_model", "FeatureGetterNet", "FeatureInfo", "load", "save_pretrained", "from_pretrained",
           "push_to_hub", "describe_architecture", "model_spec", "read_spec", "check_model_size", "short_alias",
           "register_init", "METADATA_KEY", "resolve_source", "WeightSource", "shape_kwargs", "trunc_normal_"]

"""Interpretation: weight-structure figures (the mimetic paper's Figure 1), attention maps, attention rollout, PCA of
patch features, and emergent segmentation (class-token attention thresholding, MaskCut) with its mIoU."""
from ._load import load_model, parse_model_kwargs, with_run_preprocessing
from .attention import attention_rollout, cls_attention, grid_shape, patch_features, pca_rgb, record_attention
from .segment import (METHODS, SegmentationScores, attention_scores, evaluate_fashion_mnist, evaluate_segmentation,
                      fashion_mnist_foreground, maskcut, mass_threshold, score_batch, segmentation_scores,
                      unsupervised_masks, upsample_mask)
from .weights import (LayerProducts, format_stats, init_products, plot_checkpoint, plot_init_comparison,
                      plot_weight_products, weight_products)

__all__ = ["LayerProducts", "weight_products", "format_stats", "plot_weight_products", "init_products",
           "plot_init_comparison", "load_model", "plot_checkpoint", "parse_model_kwargs", "with_run_preprocessing",
           "grid_shape", "record_attention", "cls_attention", "attention_rollout", "patch_features", "pca_rgb",
           "METHODS", "SegmentationScores", "attention_scores", "evaluate_segmentation", "evaluate_fashion_mnist",
           "score_batch", "fashion_mnist_foreground",
           "maskcut", "mass_threshold", "segmentation_scores", "unsupervised_masks", "upsample_mask"]

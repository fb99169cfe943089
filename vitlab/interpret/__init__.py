"""Interpretation: weight-structure figures (the mimetic paper's Figure 1: W_q W_kᵀ per head and W_v W_proj)."""
from .weights import (LayerProducts, format_stats, init_products, load_model_for_plot, parse_model_kwargs,
                      plot_checkpoint, plot_init_comparison, plot_weight_products, weight_products)

__all__ = ["LayerProducts", "weight_products", "format_stats", "plot_weight_products", "init_products",
           "plot_init_comparison", "load_model_for_plot", "plot_checkpoint", "parse_model_kwargs"]

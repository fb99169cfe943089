"""The one skeleton shared by ViT, CRATE and CRATE-α: patch embedding → [class token] + positions → blocks →
final norm → pooling → head. The families differ only in the block they stack and in their initialisation.

The timm model contract: `forward_features`, `forward_head(x, pre_logits=False)`, `reset_classifier`,
`no_weight_decay`, `num_features`, `pretrained_cfg`, `set_grad_checkpointing`, `group_matcher`, `feature_info`,
`forward_intermediates` / `prune_intermediate_layers` (timm >= 1.0 semantics, for dense prediction); plus
`forward_attention` for attention maps and `get_blocks` (the `TransformerBlocks` contract of `_contract.py`).

Inputs of any size that is a multiple of the patch are accepted (timm's `dynamic_img_size=True`, vitlab's default):
the position table is rebuilt for the new grid on every forward (sin-cos: computed exactly; learned: resampled
bicubic as timm). It is not cached: a cache keyed on the parameter can go stale (fused AdamW updates in place without
bumping `_version`), and resampling costs under 1% of a forward (measured). `dynamic_img_size=False` accepts the
native size only (timm's default). `img_size` may be (H, W): the position table then covers an H/P × W/P grid.

Regularisation as timm's VisionTransformer: `drop_path_rate` (stochastic depth, per-block probability rising
linearly from 0 at the first block to the rate at the last, on each residual branch) and `drop_rate` (dropout on
the pooled features before the head, timm's `head_drop`). Both act in training only and default to 0.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable

import torch
from torch import nn

from ._constants import check_depth
from ._contract import run_blocks
from ._hub import HubMixin
from ._layers import (ConvStem, CratePatchEmbed, PatchEmbed, drop_path_rates, resample_position_embedding,
                      sincos_2d_position_embedding, to_2tuple)

__all__ = ["ImageTransformer"]


class ImageTransformer(HubMixin, nn.Module):
    """Args:
        block_fn: `block_fn(index, drop_path) -> nn.Module`, `drop_path` the block's stochastic-depth probability;
            each block maps (B, N, d) → (B, N, d) and has `forward_with_attention(x) -> (x, attn (B, H, N, N))`.
        img_size: the native input size, an int (square) or (H, W).
        patch_embed: 'conv' (timm / CRATE-α), 'crate' (official CRATE: LN → Linear → LN) or 'convstem' (stride-2
            3×3 convolutions, `ConvStem`; a power-of-two patch_size, any input size: the grid is ceil(H/P)).
        pos_embed: 'learn' or 'sincos' (fixed 2-D sin-cos, class slot zero, stored but not trained).
        global_pool: 'token' (class token; the final norm runs on every token, as timm) or 'avg' (mean of the patch
            tokens, then the final norm as `fc_norm`, as timm).
        drop_rate: dropout probability on the pooled features before the head (timm's `head_drop`).
        drop_path_rate: stochastic depth of the last block; block i gets drop_path_rate · i / (depth − 1).
        dynamic_img_size: True (default): any input size that is a multiple of the patch; False: the native
            `img_size` only, anything else is a ValueError.
    """

    def __init__(self, *, block_fn: Callable[[int, float], nn.Module], img_size: int | tuple[int, int] = 224,
                 patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, patch_embed: str = "conv", patch_embed_bias: bool = True,
                 pos_embed: str = "learn", class_token: bool = True, global_pool: str = "token",
                 norm_eps: float = 1e-6, head_bias: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, dynamic_img_size: bool = True):
        super().__init__()
        height, width = to_2tuple(img_size, "img_size")
        for name, value, minimum in (("img_size", height, 1), ("img_size", width, 1), ("patch_size", patch_size, 1),
                                     ("in_chans", in_chans, 1), ("num_classes", num_classes, 0),
                                     ("embed_dim", embed_dim, 1), ("num_heads", num_heads, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        check_depth("depth", depth)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_heads, self.depth = num_heads, depth
        self.num_prefix_tokens = 1 if class_token else 0
        self.pos_embed_type = pos_embed
        self.dynamic_img_size = bool(dynamic_img_size)
        self.drop_rate, self.drop_path_rate = drop_rate, drop_path_rate

        if patch_embed == "conv":
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, bias=patch_embed_bias)
        elif patch_embed == "crate":
            self.patch_embed = CratePatchEmbed(img_size, patch_size, in_chans, embed_dim)
        elif patch_embed == "convstem":
            self.patch_embed = ConvStem(img_size, patch_size, in_chans, embed_dim)
        else:
            raise ValueError(f"patch_embed must be 'conv', 'convstem' or 'crate', got {patch_embed!r}")
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim), requires_grad=pos_embed == "learn")
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[block_fn(i, rates[i]) for i in range(depth)])
        self.grad_checkpointing = False
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, bias=head_bias) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}")
                             for i in range(depth)]
        self.reset_position_embedding()

    # --------------------------------------------------------------------------------------------------------
    def reset_position_embedding(self) -> None:
        """Writes the fixed sin-cos table (pos_embed='sincos'); a learned table is set by the family's init."""
        if self.pos_embed_type == "sincos":
            table = sincos_2d_position_embedding(self.patch_embed.grid_hw, self.embed_dim)  # (N_patches, d)
            with torch.no_grad():
                self.pos_embed.zero_()
                self.pos_embed[0, self.num_prefix_tokens:] = table

    def no_weight_decay(self) -> set[str]:
        """Full names of every parameter the family's official recipe does not decay (not only timm's shortlist)."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1} | {"pos_embed", "cls_token"}

    def get_blocks(self) -> nn.Sequential:
        """The repeated blocks, in forward order (the `TransformerBlocks` contract; state-dict prefix `blocks.`)."""
        return self.blocks

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: when on, the training forward recomputes each block in backward instead of storing its
        activations (less memory, about one more forward of compute; identical results)."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New zero-initialised head (timm contract); changing pooling between 'token' and 'avg' is refused because
        it moves the final norm."""
        if global_pool is not None and global_pool != self.global_pool:
            raise ValueError(f"cannot change global_pool from {self.global_pool!r} to {global_pool!r} after "
                             "construction; create the model with global_pool=... instead")
        self.num_classes = num_classes
        bias = not isinstance(self.head, nn.Linear) or self.head.bias is not None
        self.head = nn.Linear(self.embed_dim, num_classes, bias=bias) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            if self.head.bias is not None:
                nn.init.zeros_(self.head.bias)

    # --------------------------------------------------------------------------------------------------------
    def _position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, N, d) position embedding (class slot first) for a patch grid: the stored table at the native grid;
        another grid gets the sin-cos table computed for it, or the learned table resampled (bicubic, timm's rule),
        from the current weights on every call (no cache that an in-place update could leave stale)."""
        native = self.patch_embed.grid_hw
        if grid == native:
            return self.pos_embed
        table = self.pos_embed
        prefix = table[:, :self.num_prefix_tokens]  # (1, P, d) class slot
        if self.pos_embed_type == "sincos":
            patches = sincos_2d_position_embedding(grid, self.embed_dim).to(table)[None]  # (1, gh·gw, d)
        else:
            patches = resample_position_embedding(table[:, self.num_prefix_tokens:], native, grid)  # (1, gh·gw, d)
        return torch.cat([prefix, patches], dim=1)  # (1, P + gh·gw, d)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embed.feat_size(x.shape[-2], x.shape[-1])  # (gh, gw)
        if not self.dynamic_img_size and grid != self.patch_embed.grid_hw:
            raise ValueError(f"input size {tuple(x.shape[-2:])} differs from the model's img_size "
                             f"{self.patch_embed.img_hw}; build it with dynamic_img_size=True to accept any multiple "
                             f"of the patch size {self.patch_embed.patch_size}")
        x = self.patch_embed(x)  # (B, gh·gw, d)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, d)
        return x + self._position_table(grid)  # (B, N, d)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, N, d) tokens after the final norm (token pooling) or before it (avg)."""
        x = run_blocks(self.blocks, self._embed(x), self.grad_checkpointing)  # (B, N, d)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, d)
        else:
            x = x[:, 0]  # (B, d)
        x = self.head_drop(self.fc_norm(x))  # dropout before the head (timm's head_drop; training only)
        return x if pre_logits else self.head(x)  # (B, d) or (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- dense features (timm >= 1.0 contract) ---------------------------------------------------------------
    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | tuple[int, ...] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              output_dict: bool = False) -> Any:
        """Block outputs for dense prediction, with timm's semantics and return values.

        Args:
            x: (B, C, H, W) images, H and W multiples of the patch size.
            indices: None = every block, an int n = the last n blocks, a sequence = those blocks (negative counts
                from the end).
            norm: pass each intermediate through the final norm (`self.norm`; Identity for global_pool='avg').
            output_fmt: 'NCHW' → (B, d, gh, gw) patch maps; 'NLC' → (B, gh·gw, d) tokens.
            return_prefix_tokens: pair each intermediate with its class token (B, 1, d).
            stop_early: do not run the blocks after the last one asked for.
            intermediates_only: return the list only; else (final normed tokens (B, N, d), list).
            output_dict: {'image_intermediates': list, 'image_features': tokens, 'image_intermediates_prefix'}.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        gh, gw = self.patch_embed.feat_size(height, width)
        x = self._embed(x)  # (B, N, d)
        blocks = self.blocks[:last + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = run_blocks([block], x, self.grad_checkpointing)  # (B, N, d)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates]  # (B, P, d) each
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]  # (B, gh·gw, d) each
        if output_fmt == "NCHW":
            intermediates = [y.reshape(B, gh, gw, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]  # (B, d, gh, gw) each
        if output_dict:
            out = {"image_intermediates": intermediates}
            if return_prefix_tokens and self.num_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drops the blocks after the last one `indices` selects (and, as asked, the final norm and the head);
        returns the absolute indices kept (timm's contract)."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        self.depth = len(self.blocks)
        self.feature_info = self.feature_info[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0)
        return take

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter grouping, timm's ViT's own: the stem is group 0, block i is group i + 1, the final norm
        joins the last block (`(99999,)` is timm's MATCH_PREV_GROUP) and the unmatched rest (head) comes last;
        `coarse` has no effect (each block is one group either way). `vitlab.train.optim.layer_ids` reads the stem
        and block regexes and puts norm and head together after the blocks (BEiT / MAE)."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None),
                                                                         (r"^norm", (99999,))])

    @torch.no_grad()
    def forward_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention probabilities of every block: (B, layers, heads, N, N), class token at index 0."""
        x = self._embed(x)
        maps = []
        for block in self.blocks:
            x, attn = block.forward_with_attention(x)
            maps.append(attn)
        return torch.stack(maps, dim=1)


def feature_take_indices(num_blocks: int, indices: int | list[int] | tuple[int, ...] | None = None
                         ) -> tuple[list[int], int]:
    """timm's rule for which blocks to take: None → all, an int n → the last n, a sequence → those (negative from
    the end). Returns (absolute indices, the largest)."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, numbers.Integral) and not isinstance(indices, bool):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"indices={indices}: the last n blocks needs 1 <= n <= {num_blocks}")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = []
        for i in indices:
            index = num_blocks + i if i < 0 else i
            if not 0 <= index < num_blocks:
                raise ValueError(f"block index {i} is out of range for {num_blocks} blocks")
            take.append(int(index))
        if not take:
            raise ValueError("indices is an empty sequence: name at least one block")
    return take, max(take)

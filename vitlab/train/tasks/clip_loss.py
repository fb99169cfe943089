"""CLIP's symmetric contrastive (InfoNCE) loss, with features gathered over data-parallel ranks.

Same semantics as open_clip's `ClipLoss` / `gather_features` (mlfoundations/open_clip, src/open_clip/loss.py), which
is the reference the tests compare against. For B pairs per rank, W ranks, N = W·B, L2-normalised image features
I (N, D) and text features T (N, D) and the already-exponentiated temperature s = exp(t) (CLIP, Radford et al. 2021,
Fig. 3):

    logits = s · I Tᵀ                                     (N, N); row i scores image i against every text
    loss   = ½ [CE(logits, y) + CE(logitsᵀ, y)],  y = (0, …, N-1)

CE is the mean cross-entropy over rows. With `local_loss=True` each rank keeps only its own B rows:
logits_per_image = s · I_local T_allᵀ (B, N), logits_per_text = s · T_local I_allᵀ (B, N),
y = rank·B + (0, …, B-1), and the loss is the mean over the rank's B rows (the mean over ranks of these losses is
the global loss).

Gradients across ranks. Without `gather_with_grad` the gathered features are constants except the rank's own slice,
which is the original tensor: rank r's gradient w.r.t. its local features is exactly slice r of the gradient of the
global loss (factor 1). DDP then *averages* parameter gradients over the W ranks, so the parameters receive 1/W of
the global-loss gradient (as in open_clip). With `gather_with_grad` the all-gather's backward sums the W ranks'
gradients into each slice: each rank's local gradient is W × its slice, and after DDP's average the parameters get
exactly the global-loss gradient. tests/test_clip_loss.py pins both factors with two gloo processes.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipLoss", "gather_features"]


def _group_of(info_or_group):
    """A `torch.distributed` process group, or None (the default group) for None or a DistInfo."""
    if info_or_group is not None and isinstance(info_or_group, dist.ProcessGroup):
        return info_or_group
    return None


def _rank_and_world(info_or_group) -> tuple[int, int]:
    """(rank, world size) in the group; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    group = _group_of(info_or_group)
    return dist.get_rank(group), dist.get_world_size(group)


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor, info_or_group=None,
                    local_loss: bool = False, gather_with_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather (B, D) image and text features over the ranks into (W·B, D), rank order along dim 0.

    `info_or_group`: a `torch.distributed.ProcessGroup`, or None / a `vitlab.train.distributed.DistInfo` for the
    default group. Without distributed (not initialised, or world size 1) the inputs come back unchanged.
    `gather_with_grad`: `torch.distributed.nn.functional.all_gather`, whose backward sums every rank's gradient into
    each slice. Otherwise the gather is of detached tensors and, unless `local_loss`, the rank's own slice is replaced
    by the original tensors so that the local features keep their gradient (open_clip's `gather_features`).
    """
    rank, world_size = _rank_and_world(info_or_group)
    if world_size == 1:
        return image_features, text_features
    group = _group_of(info_or_group)
    if gather_with_grad:
        from torch.distributed.nn.functional import all_gather
        all_image = torch.cat(all_gather(image_features, group=group), dim=0)  # (W·B, D)
        all_text = torch.cat(all_gather(text_features, group=group), dim=0)  # (W·B, D)
        return all_image, all_text
    gathered_image = [torch.empty_like(image_features) for _ in range(world_size)]  # W × (B, D)
    gathered_text = [torch.empty_like(text_features) for _ in range(world_size)]  # W × (B, D)
    dist.all_gather(gathered_image, image_features.detach().contiguous(), group=group)
    dist.all_gather(gathered_text, text_features.detach().contiguous(), group=group)
    if not local_loss:  # the local slice keeps its gradient
        gathered_image[rank] = image_features
        gathered_text[rank] = text_features
    return torch.cat(gathered_image, dim=0), torch.cat(gathered_text, dim=0)  # (W·B, D) each


class ClipLoss(nn.Module):
    """Symmetric InfoNCE of CLIP over the global batch (equation in the module docstring).

    `forward(image_features (B, D), text_features (B, D), logit_scale)` → scalar loss, or
    `{"contrastive_loss": loss}` with `output_dict=True`. `logit_scale` is the exponentiated temperature (a scalar
    tensor or float), as open_clip passes it. Features are expected L2-normalised; the loss does not normalise them.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 info_or_group=None):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.info_or_group = info_or_group
        self._labels: dict[tuple[torch.device, int, int], torch.Tensor] = {}

    def ground_truth(self, device: torch.device, num_logits: int, rank: int, world_size: int) -> torch.Tensor:
        """Target index of each logits row: arange(num_logits), offset by rank·B under local_loss."""
        key = (device, num_logits, rank)
        if key in self._labels:
            return self._labels[key]
        labels = torch.arange(num_logits, device=device, dtype=torch.long)  # (rows,)
        if world_size > 1 and self.local_loss:
            labels = labels + num_logits * rank
        if self.cache_labels:
            self._labels[key] = labels
        return labels

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, world_size: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image, logits_per_text): (N, N) each, or (B, N) each under local_loss."""
        if world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T  # (B, B)
            return logits_per_image, logits_per_image.T
        all_image, all_text = gather_features(image_features, text_features, self.info_or_group,
                                              self.local_loss, self.gather_with_grad)  # (N, D) each
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_text.T  # (B, N)
            logits_per_text = logit_scale * text_features @ all_image.T  # (B, N)
            return logits_per_image, logits_per_text
        logits_per_image = logit_scale * all_image @ all_text.T  # (N, N)
        return logits_per_image, logits_per_image.T

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                output_dict: bool = False):
        rank, world_size = _rank_and_world(self.info_or_group)
        logits_per_image, logits_per_text = self.logits(image_features, text_features, logit_scale, world_size)
        labels = self.ground_truth(image_features.device, logits_per_image.shape[0], rank, world_size)  # (rows,)
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return {"contrastive_loss": loss} if output_dict else loss

"""One `subset(n)` for every vitlab dataset (`train_subset` / `eval_subset`), and the one place that says which
samples it keeps:

- the first `n` in stored order, for the datasets whose stored order is already mixed: the in-memory tensors
  (`TensorImageDataset`, `SegmentationTensorDataset`), caption tables (`CsvImageTextDataset`) and the three shard
  datasets (`ShardDataset`, `SegmentationShardDataset`, `CaptionShardDataset`: the shard writers store samples in a
  seeded random order; first in shard order, shard by shard);
- `n` drawn once with a fixed seed (0) and kept in stored order (`SUBSET_DRAWN = True`), for the datasets stored
  grouped: `ImageFolderDataset` (class by class) and `ADE20KDataset` (scene by scene), whose first `n` would be a
  few classes or scene types only.

Both give the same `n` samples on every run. `n` = 0 or `n` ≥ len: the dataset itself.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Subset", "SUBSET_SEED", "leading"]

SUBSET_SEED = 0


class Subset:
    """Mixin: `subset(n)`; a dataset gives `__len__` and `_select(rows)`, a copy holding the samples `rows` ((n,)
    int64, increasing)."""

    SUBSET_DRAWN = False  # False: the first n samples; True: n drawn with SUBSET_SEED (module docstring)

    def subset(self, n: int):
        """The `n`-sample subset of this dataset (module docstring: which `n`); 0 or n ≥ len: the dataset."""
        if not n or n >= len(self):
            return self
        if self.SUBSET_DRAWN:
            rows = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(self), size=n, replace=False))
        else:
            rows = np.arange(n)
        return self._select(rows)

    def _select(self, rows: np.ndarray):
        raise NotImplementedError


def leading(rows: np.ndarray) -> slice | np.ndarray:
    """`rows` as an index: the slice `[:n]` when they are the first n (a view of a tensor, not a copy)."""
    return slice(0, len(rows)) if len(rows) and int(rows[-1]) == len(rows) - 1 else rows

"""Held-out locations (SPLIT=locations|blocks, FOLDS=K): which location is in which fold, and which
locations each fold's model may train on.

- ``locations``: the target locations (stations, or target pixels) are dealt into K folds at random
  (seeded), or taken from the user's fold labels (a field of the station layer: ``fold_labels``).
- ``blocks`` (grids): the grid is cut into square blocks of ``block_size`` pixels, the blocks are dealt
  into K folds; a location belongs to its block's fold. Fold k's model may not train on a location within
  ``buffer`` pixels (Chebyshev distance, default the patch size) of any location of fold k, so no training
  window's k x k patch overlaps a held-out pixel.

Cross-validation trains one model per fold, all in one pass (the folds are stacked like ensemble members,
``networks.SoilMoistureNet``), fold k's loss only on the locations it may train on. Its out-of-fold
estimate at a location is the estimate of the model of that location's fold, which never saw it.
No QGIS, no torch.
"""
from typing import Optional, Sequence

import numpy as np

from ..options import SPLITS


class FoldError(ValueError):
    pass


def assign_folds(rows, cols, split: str, folds: int, seed: int = 0, block_size: int = None,
                 fold_labels: Optional[Sequence] = None, labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """(N,) int fold of every location, 0..K-1. rows/cols: the locations' pixels. fold_labels (N,): the
    user's fold of each location (any hashable values, exactly K distinct ones; None/'' = not given)."""
    if split not in SPLITS or split == "time":
        raise FoldError(f"SPLIT must be locations or blocks for folds, got '{split}'")
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    n = len(rows)
    if int(folds) != folds or folds < 2:
        raise FoldError(f"FOLDS must be a whole number >= 2, got {folds}")
    folds = int(folds)
    if n < 2:
        raise FoldError(f"SPLIT={split} needs at least 2 locations to hold some out; the dataset has {n}")
    if fold_labels is not None:
        vals = [None if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "" else str(v)
                for v in fold_labels]
        missing = [labels[i] if labels else str(i) for i, v in enumerate(vals) if v is None]
        if missing:
            raise FoldError(f"the fold field has no value for {len(missing)} location(s) ({', '.join(missing[:5])}"
                            f"{', ...' if len(missing) > 5 else ''}): give every station a fold")
        distinct = sorted(set(vals))
        if len(distinct) != folds:
            raise FoldError(f"the fold field has {len(distinct)} distinct value(s) ({', '.join(distinct[:10])}), "
                            f"but FOLDS is {folds}: the values must form exactly FOLDS folds")
        return np.array([distinct.index(v) for v in vals], np.int64)
    rng = np.random.default_rng(seed)
    if split == "locations":
        if folds > n:
            raise FoldError(f"FOLDS={folds} is more than the {n} locations: some fold would hold no location; "
                            f"choose FOLDS <= {n}")
        out = np.empty(n, np.int64)
        out[rng.permutation(n)] = np.arange(n) % folds
        return out
    b = int(block_size or 0)
    if b < 1:
        raise FoldError(f"BLOCK_SIZE must be >= 1 pixel, got {block_size}")
    block = (rows // b) * (int(cols.max()) // b + 1) + cols // b
    ids = np.unique(block)
    if folds > len(ids):
        raise FoldError(f"FOLDS={folds} is more than the {len(ids)} blocks of {b} x {b} pixels that hold locations: "
                        f"some fold would hold no location; choose smaller blocks or fewer folds")
    fold_of_block = np.empty(len(ids), np.int64)
    fold_of_block[rng.permutation(len(ids))] = np.arange(len(ids)) % folds
    return fold_of_block[np.searchsorted(ids, block)]


def training_exclusion(rows, cols, fold_of: np.ndarray, folds: int, buffer: int = 0) -> np.ndarray:
    """(K, N) bool: location n may NOT train fold k's model: it is in fold k, or (buffer > 0) within
    `buffer` pixels (Chebyshev) of a location of fold k."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    fold_of = np.asarray(fold_of, np.int64)
    out = np.zeros((folds, len(rows)), bool)
    for k in range(folds):
        held = fold_of == k
        out[k] = held
        if buffer > 0 and held.any():
            # nearest held-out location per location, in chunks (N x N_held distances)
            hr, hc = rows[held], cols[held]
            for s in range(0, len(rows), 4096):
                d = np.maximum(np.abs(rows[s:s + 4096, None] - hr[None]), np.abs(cols[s:s + 4096, None] - hc[None]))
                out[k, s:s + 4096] |= d.min(axis=1) <= buffer
    empty = [k for k in range(folds) if out[k].all()]
    if empty:
        raise FoldError(f"fold(s) {', '.join(str(k + 1) for k in empty)} would have no training location left "
                        f"(held out or within the {buffer}-pixel buffer): use smaller blocks, fewer folds or a "
                        f"smaller buffer")
    return out

"""Training and scoring samples: windows cut on the fly from the dataset cube, and which samples to draw.

``WindowSampler`` cuts (B, L, V, k, k) windows (or runs of consecutive days with their context) out of the
normalised cube with one gather; ``draw_runs`` draws an epoch's runs of consecutive target days around
valid samples; ``select_samples`` picks a bounded set of samples to score (whole locations for stateful
models). ``data/chunked.ChunkedWindowSampler`` has the sampler's interface for cubes that do not fit in
memory. Pure numpy / torch; no qgis import.
"""
import numpy as np
import torch

from ..data.cube import Cube


class WindowSampler:
    """Cuts (B, L, V, k, k) windows out of the normalised cube with one gather.

    The padded cube is kept as it is stored, variable-major (V, T, H + 2r, W + 2r). A window is made
    of V x S x k runs of k consecutive pixels of a cube row; the batch is one index_select of those
    runs from an overlapping view of the cube (one row of k floats starting at every element): 8x
    faster than indexing a (V, start, row, col, S, k, k) view element by element. The batch comes
    out contiguous as (V, G, S, k, k) and is handed over as its (G, S, V, k, k) view: the model's
    patch convolution reads its variables' rows from that memory without a copy.

    The padded cube lives on the training device when it fits (GPU gather, no host copies);
    otherwise on the host and batches go over in pinned memory with non_blocking copies.

    Stateful models read SPIN_UP days before a sample's window, which may lie before the first date: the
    cube is then padded in time with days of missing input (0 after normalisation, as every gap is filled),
    the same days a prediction reads where its inputs have no warm-up (``inference.iter_tile_predictions``)."""

    def __init__(self, cube: Cube, device: torch.device, pad_days: int = 0):
        k, L = cube.patch_size, cube.seq_len
        self.seq_len = L     # window length; the padded cube does not depend on it (evaluate reuses a sampler)
        self.pad = int(pad_days)    # days of missing input before the first date
        r = k // 2
        xn = cube.normalised_x()
        np.nan_to_num(xn, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if r or self.pad:
            xn = np.pad(xn, ((0, 0), (self.pad, 0), (r, r), (r, r)))
        x = torch.from_numpy(np.ascontiguousarray(xn))                          # V, T, H+2r, W+2r
        self.device = device
        on_device = device.type == "cpu"
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            on_device = x.numel() * 4 < 0.4 * free
        self.host_gather = not on_device
        self.x = x.to(device) if on_device else x
        gdev = self.x.device
        yn = (cube.y - cube.y_mean) / cube.y_std
        self.y = torch.from_numpy(yn.astype(np.float32)).to(gdev)
        self.rows = torch.from_numpy(cube.target_rows.astype(np.int64)).to(gdev)
        self.cols = torch.from_numpy(cube.target_cols.astype(np.int64)).to(gdev)
        self.k = k
        doy = (cube.dates - cube.dates.astype("datetime64[Y]")).astype(np.int64) + 1
        self.doy = torch.from_numpy(doy).to(gdev)

    def batch(self, t_idx, n_idx, m: int = 1, context: int = None):
        """Runs of m consecutive target days ending at days t_idx at locations n_idx (G of each), each with
        the `context` days before it (default SEQ_LEN - 1: windows; a stateful model's ``context_days``).
        Returns xb (G, context + m, V, k, k), targets yb (m * G,) and day of year db (m * G,), rows
        j * G + g = day t_idx[g] - m + 1 + j (the model's row order). m = 1: single windows."""
        gdev = self.x.device
        context = self.seq_len - 1 if context is None else int(context)
        t = torch.as_tensor(t_idx, device=gdev)
        n = torch.as_tensor(n_idx, device=gdev)
        if len(t) and int(t.min()) - m + 1 - context < -self.pad:
            raise ValueError(f"a run of {m} days with {context} days of context before day {int(t.min())} starts "
                             f"before the sampler's {self.pad} days of padding")
        S, k = context + m, self.k
        V, T, Hp, Wp = self.x.shape
        sv, st, sr, _ = self.x.stride()
        runs = self.x.as_strided((self.x.numel() - k + 1, k), (1, 1))        # runs[i] = flat cube[i:i + k]
        first = (t + self.pad - S + 1) * st + self.rows[n] * sr + self.cols[n]         # G: each window's first pixel
        within = (torch.arange(V, device=gdev)[:, None, None] * sv + torch.arange(S, device=gdev)[:, None] * st
                  + torch.arange(k, device=gdev) * sr)                       # V, S, k: the runs of a window
        xb = runs.index_select(0, (within[:, None] + first[:, None, None]).view(-1)).view(V, len(first), S, k, k)
        td = t[None, :] + torch.arange(1 - m, 1, device=gdev)[:, None]     # m, G
        yb, db = self.y[td, n[None, :]].reshape(-1), self.doy[td].reshape(-1)
        if self.host_gather:
            xb, yb, db = (a.pin_memory().to(self.device, non_blocking=True) for a in (xb, yb, db))
        return xb.permute(1, 2, 0, 3, 4), yb, db


def draw_runs(rng: np.random.Generator, mask: np.ndarray, t_idx: np.ndarray, n_idx: np.ndarray,
              count: int, m: int, seq_len: int):
    """`count` runs of m consecutive target days at one location, each around a valid sample drawn
    uniformly from (t_idx, n_idx) (at a random place in the run, so every valid sample is equally
    likely to be covered). mask (T, N): the valid samples. Returns the runs' last days (count,),
    locations (count,) and which of their days are valid samples, bool (m * count,) in the
    sampler's row order (j * count + g)."""
    T = mask.shape[0]
    sel = rng.choice(len(t_idx), count, replace=count > len(t_idx))
    end = np.clip(t_idx[sel] + rng.integers(0, m, count), seq_len + m - 2, T - 1)
    loc = n_idx[sel]
    days = end[None, :] + np.arange(1 - m, 1)[:, None]                       # m, count
    return end, loc, mask[days, loc[None, :]].reshape(-1)


def select_samples(rng: np.random.Generator, t_idx: np.ndarray, n_idx: np.ndarray, count: int,
                   by_location: bool = False):
    """Up to `count` of the samples (t, n), sorted. by_location (stateful models): whole locations' samples
    (locations in random order until `count` is reached), so that scoring runs over consecutive days and
    pays one spin-up per run rather than per sample (``sample_runs``)."""
    if len(t_idx) <= count:
        return t_idx, n_idx
    if not by_location:
        sel = np.sort(rng.choice(len(t_idx), count, replace=False))
        return t_idx[sel], n_idx[sel]
    locs, per_loc = np.unique(n_idx, return_counts=True)
    perm = rng.permutation(len(locs))
    keep = locs[perm[:max(1, int(np.searchsorted(np.cumsum(per_loc[perm]), count)) + 1)]]
    sel = np.nonzero(np.isin(n_idx, keep))[0]
    if len(sel) > count:      # one location alone holds more: its samples in time order, cut
        sel = sel[np.argsort(t_idx[sel], kind="stable")][:count]
    sel = np.sort(sel)
    return t_idx[sel], n_idx[sel]

"""A model run on samples (t, n) of a dataset cube, through a window sampler (validation, scoring, evaluate).

``predict_samples`` returns SM, routing weights and expert outputs per sample (per ensemble member with
``members=True``); stateful models cover the samples with runs of consecutive days and their spin-up
(``sample_runs``). ``set_contribution_reference`` sets the additive/gated mixture's reference
contributions from training windows. Pure numpy / torch; no qgis import.
"""
import numpy as np
import torch

from .sampler import WindowSampler


STATEFUL_RUN_DAYS = 128   # output days per sequence when a stateful model scores samples (after its spin-up)


def sample_runs(model, n_dates: int, t_idx, n_idx, run_days: int = STATEFUL_RUN_DAYS):
    """How ``predict_samples`` covers samples (t, n) with runs of consecutive output days. A windowed model:
    one single-day run per sample (m = 1). A stateful model: each location's samples, in time order, are
    covered by runs of m = min(run_days, usable days) days, each read with its spin-up, so a location's
    period costs one spin-up per run_days days instead of one per sample. Returns (m, context, run ends,
    run locations, each sample's run, each sample's day within its run)."""
    cfg = model.cfg
    t_idx, n_idx = np.asarray(t_idx, np.int64), np.asarray(n_idx, np.int64)
    if not cfg.stateful:
        return 1, cfg.seq_len - 1, t_idx, n_idx, np.arange(len(t_idx)), np.zeros(len(t_idx), np.int64)
    L = cfg.seq_len
    m = max(1, min(run_days, n_dates - L + 1))
    order = np.lexsort((t_idx, n_idx))
    ends, locs = [], []
    run_of = np.empty(len(t_idx), np.int64)
    day_of = np.empty(len(t_idx), np.int64)
    cur_n, cur_end = None, None
    for i in order:
        t, n = int(t_idx[i]), int(n_idx[i])
        if n != cur_n or t > cur_end:
            cur_n, cur_end = n, min(t + m - 1, n_dates - 1)
            ends.append(cur_end)
            locs.append(n)
        run_of[i] = len(ends) - 1
        day_of[i] = t - (cur_end - m + 1)
    return m, cfg.context_days, np.asarray(ends, np.int64), np.asarray(locs, np.int64), run_of, day_of


@torch.no_grad()
def predict_samples(model, sampler: WindowSampler, t_idx, n_idx, batch_size=2048, amp_dtype=None,
                    with_silent: bool = False, run_days: int = STATEFUL_RUN_DAYS, members: bool = False):
    """Run the model on samples (t, n). Returns SM in target units (N,), weights (N, E), experts (N, E):
    SM estimates in target units (convex mixture) or contributions in target units (scaled, additive),
    and with `with_silent` the silent-factor mask (N, E) as well. Stateful models run over runs of
    consecutive days with their spin-up (``sample_runs``). members=True: every ensemble member's outputs,
    SM (N, M), weights and experts (N, M, E) for M members, instead of their means."""
    from .networks import silent_factor_mask
    model.eval()
    E, L = model.n_experts, model.cfg.seq_len
    M = (model.members,) if members else ()
    m, context, ends, locs, run_of, day_of = sample_runs(model, sampler.y.shape[0], t_idx, n_idx, run_days)
    ys = np.zeros((len(t_idx),) + M, np.float32)
    ws = np.zeros((len(t_idx),) + M + (E,), np.float32)
    es = np.zeros((len(t_idx),) + M + (E,), np.float32)
    sil = np.zeros((len(t_idx), E), bool)
    per = max(1, batch_size // m)          # runs per batch
    order = np.argsort(run_of, kind="stable")
    bounds = np.searchsorted(run_of[order], np.arange(0, len(ends) + per, per))
    for bi, g0 in enumerate(range(0, len(ends), per)):
        g1 = min(len(ends), g0 + per)
        xb, _, db = sampler.batch(ends[g0:g1], locs[g0:g1], m, context)
        with torch.autocast(sampler.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            y, w, e = model.forward_members(xb, db) if members else model(xb, db)
        samples = order[bounds[bi]:bounds[bi + 1]]
        rows = torch.from_numpy(day_of[samples] * (g1 - g0) + run_of[samples] - g0)
        ys[samples] = y.float().cpu()[rows].numpy()
        ws[samples] = w.float().cpu()[rows].numpy()
        es[samples] = e.float().cpu()[rows].numpy()
        if with_silent and model.masks_silent:
            sil[samples] = silent_factor_mask(xb[:, xb.shape[1] - (m + L - 1):], model.factor_index, L
                                              ).cpu()[rows].numpy()
    cfg = model.cfg
    y = ys * cfg.y_std + cfg.y_mean
    e = es * cfg.y_std + (cfg.y_mean if model.mixture == "convex" else 0.0)
    out = (y.astype(np.float32), ws, e.astype(np.float32))
    return out + (sil,) if with_silent else out


@torch.no_grad()
def set_contribution_reference(model, sampler: WindowSampler, t_idx, n_idx, rng, n: int = 4000,
                               batch_size: int = 2048):
    """Set the additive mixture's ``contrib_ref``: each expert's mean contribution over (up to n)
    training windows where its factor has signal. The estimate does not change (the intercept mu plus
    the contributions), only the reference the weights measure departures from. Returns it (list)."""
    model.eval()
    sel = rng.choice(len(t_idx), min(n, len(t_idx)), replace=False)
    _, _, c, silent = predict_samples(model, sampler, t_idx[sel], n_idx[sel], batch_size, with_silent=True,
                                      members=True)
    c = c / model.cfg.y_std                                   # back to normalised units, (S, members, E)
    has = np.broadcast_to(~silent[:, None, :], c.shape)
    ref = torch.from_numpy(np.where(has, c, 0.0).sum(0) / np.maximum(has.sum(0), 1)).float()   # members, E
    model.contrib_ref.copy_(ref.view(model.contrib_ref.shape).to(model.contrib_ref.device))
    return ref.mean(0).tolist()

"""Naive references for the benchmarks (written for the benchmark, not used by the plugin).

They compute the same function family as ``ismoe_qgis.model.networks.SoilMoistureNet`` (ISMoE,
router input 'expert_states', silent-factor masking) with the same sizes, the way one would
write it without thinking about speed:

- ``NaiveMoE``: a Python loop over E independent ``NaiveExpert`` modules, each the model's expert
  architecture written with stock modules: ``nn.Conv2d`` 1x1 (factor variables -> C) + ReLU, one
  'valid' k x k ``nn.Conv2d`` (C -> C) + ReLU that reduces the k x k patch to one pixel (as
  ``networks.GroupedConvStack``), ``nn.LSTM`` (one layer, hidden H), dropout, ``nn.Linear(H, 1)``;
  a naive router: one small MLP per expert (``Linear(H, R) - ReLU - Linear(R, 1)``) scoring that
  expert's final LSTM state, also looped in Python; softmax over experts; silent factors
  (every variable of the factor constant over the L days at the centre pixel) masked to weight 0.
- ``NaivePatchCutter``: patches pre-cut on the CPU, batch by batch, with numpy fancy indexing
  from the (normalised, NaN->0, zero-padded) cube, then ``torch.from_numpy(...).to(device)``.
- ``naive_loss``: the same loss as ``ismoe_qgis.model.train.loss_terms`` (mixture MSE +
  ``expert_loss`` x mean expert MSE), written out.
- ``naive_patch_windows``: cut every pixel's k x k x L patch out of a normalised tile
  (numpy fancy indexing), for naive patch-by-patch prediction.

Nothing here is deliberately slowed down: it uses PyTorch's own fused ``nn.LSTM`` and cuDNN /
oneDNN convolutions. What it lacks is what the project's design adds: batched experts,
on-device window gathering and fully convolutional (tile) prediction.
"""
from typing import List

import numpy as np
import torch
import torch.nn as nn

SILENT_TOL = 1e-4   # same tolerance as the model (networks.SILENT_TOL)


class NaiveExpert(nn.Module):
    """One CNN-LSTM expert on its own factor's variables: (B, L, v, k, k) -> (B,), (B, H)."""

    def __init__(self, n_in: int, patch_size: int, conv_channels: int, hidden: int, dropout: float):
        super().__init__()
        layers = [nn.Conv2d(n_in, conv_channels, 1), nn.ReLU()]
        if patch_size > 1:
            layers += [nn.Conv2d(conv_channels, conv_channels, patch_size), nn.ReLU()]
        self.cnn = nn.Sequential(*layers)
        self.lstm = nn.LSTM(conv_channels, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        B, L, v, k, _ = x.shape
        f = self.cnn(x.reshape(B * L, v, k, k)).reshape(B, L, -1)
        _, (h, _) = self.lstm(f)
        h = h[-1]
        return self.out(self.drop(h)).squeeze(1), h


class NaiveMoE(nn.Module):
    """E independent experts in a Python loop + a per-expert MLP router + softmax mixture.

    forward(x, doy=None) -> (y (B,), weights (B, E), expert outputs (B, E)), like SoilMoistureNet."""

    def __init__(self, factor_index: List[List[int]], patch_size: int = 7, conv_channels: int = 16,
                 hidden: int = 64, router_hidden: int = 32, dropout: float = 0.1, mask_silent: bool = True):
        super().__init__()
        self.factor_index = [list(i) for i in factor_index]
        self.mask_silent = mask_silent
        self.experts = nn.ModuleList(NaiveExpert(len(i), patch_size, conv_channels, hidden, dropout)
                                     for i in self.factor_index)
        self.router = nn.ModuleList(nn.Sequential(nn.Linear(hidden, router_hidden), nn.ReLU(),
                                                  nn.Linear(router_hidden, 1))
                                    for _ in self.factor_index)

    @property
    def n_experts(self):
        return len(self.factor_index)

    def forward(self, x, doy=None):
        outs, logits, silent = [], [], []
        k = x.shape[-1]
        for idx, expert, score in zip(self.factor_index, self.experts, self.router):
            xe = x[:, :, idx]                                   # B, L, v, k, k
            y_e, h_e = expert(xe)
            outs.append(y_e)
            logits.append(score(h_e).squeeze(1))
            c = xe[:, :, :, k // 2, k // 2]                     # B, L, v
            silent.append(((c.amax(dim=1) - c.amin(dim=1)) < SILENT_TOL).all(dim=1))
        out = torch.stack(outs, dim=1)
        logit = torch.stack(logits, dim=1).float()
        if self.mask_silent:
            s = torch.stack(silent, dim=1)
            logit = logit.masked_fill(s & ~s.all(dim=1, keepdim=True), float("-inf"))
        w = torch.softmax(logit, dim=1)
        return (w * out.float()).sum(dim=1), w, out


def naive_loss(model, x, y, expert_loss: float = 0.5):
    """Same objective as train.loss_terms (router_entropy off)."""
    pred, _, experts = model(x)
    pred, experts = pred.float(), experts.float()
    loss = torch.mean((pred - y) ** 2)
    if expert_loss:
        loss = loss + expert_loss * torch.mean((experts - y[:, None]) ** 2)
    return loss


class NaivePatchCutter:
    """Training batches cut on the CPU with numpy fancy indexing, then copied to the device."""

    def __init__(self, cube, device):
        k, L = cube.patch_size, cube.seq_len
        r = k // 2
        xn = cube.normalised_x()
        np.nan_to_num(xn, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        self.x = np.pad(xn, ((0, 0), (0, 0), (r, r), (r, r))) if r else xn     # V, T, H+2r, W+2r
        self.y = ((cube.y - cube.y_mean) / cube.y_std).astype(np.float32)
        self.rows = cube.target_rows.astype(np.int64)
        self.cols = cube.target_cols.astype(np.int64)
        self.L, self.k = L, k
        self.device = torch.device(device)

    def batch(self, t_idx, n_idx):
        t_idx, n_idx = np.asarray(t_idx), np.asarray(n_idx)
        tt = (t_idx[:, None] + np.arange(-self.L + 1, 1)[None, :])[:, :, None, None]        # B, L, 1, 1
        rr = (self.rows[n_idx][:, None] + np.arange(self.k)[None, :])[:, None, :, None]     # B, 1, k, 1
        cc = (self.cols[n_idx][:, None] + np.arange(self.k)[None, :])[:, None, None, :]     # B, 1, 1, k
        xb = np.ascontiguousarray(self.x[:, tt, rr, cc].transpose(1, 2, 0, 3, 4))           # B, L, V, k, k
        yb = self.y[t_idx, n_idx]
        return torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device)


def naive_patch_windows(xt_np: np.ndarray, L: int, k: int, t_idx: np.ndarray, p_idx: np.ndarray, w: int):
    """Cut patches for output (t, pixel) pairs out of a normalised tile.

    xt_np: (Ttot, V, h + 2r, w + 2r) numpy (tile with halo); output date t uses input steps t..t+L-1;
    pixel p = row * w + col of the h x w tile. Returns (B, L, V, k, k) float32, contiguous."""
    rows, cols = p_idx // w, p_idx % w
    tt = (t_idx[:, None] + np.arange(L)[None, :])[:, :, None, None, None]                   # B, L, 1, 1, 1
    vv = np.arange(xt_np.shape[1])[None, None, :, None, None]                               # 1, 1, V, 1, 1
    rr = (rows[:, None] + np.arange(k)[None, :])[:, None, None, :, None]                    # B, 1, 1, k, 1
    cc = (cols[:, None] + np.arange(k)[None, :])[:, None, None, None, :]                    # B, 1, 1, 1, k
    return np.ascontiguousarray(xt_np[tt, vv, rr, cc])


def copy_weights_from(naive: NaiveMoE, model) -> None:
    """Load a SoilMoistureNet's (ismoe, expert_states router) weights into the naive model, so the
    benchmark can check that both compute the same function (a sanity check of the reference).
    Follows networks.GroupedConvStack: w1 (E, C, vmax), b1 (E, C), wk (E, C, C*k*k), bk (E, C), and
    ExpertBank's LSTM gate order (i, f, o, g). The benchmark prints the largest difference, so a
    change of architecture that this function does not follow shows up at once."""
    bank, router = model.experts, model.router
    cnn = bank.cnn
    C, k, H = cnn.C, cnn.k, bank.H
    perm = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    with torch.no_grad():
        for e, (idx, ex) in enumerate(zip(naive.factor_index, naive.experts)):
            convs = [m for m in ex.cnn if isinstance(m, nn.Conv2d)]
            convs[0].weight.copy_(cnn.w1[e, :, :len(idx)][:, :, None, None])   # drop zero-padded inputs
            convs[0].bias.copy_(cnn.b1[e])
            if k > 1:
                convs[1].weight.copy_(cnn.wk[e].reshape(C, C, k, k))
                convs[1].bias.copy_(cnn.bk[e])
            # the bank's gate order is (i, f, o | g); nn.LSTM's is (i, f, g, o)
            ex.lstm.weight_ih_l0.copy_(bank.w_ih[e][:, perm].t())
            ex.lstm.weight_hh_l0.copy_(bank.w_hh[e][:, perm].t())
            ex.lstm.bias_ih_l0.copy_(bank.b[e][perm])
            ex.lstm.bias_hh_l0.zero_()
            ex.out.weight.copy_(bank.w_out[e][None, :])
            ex.out.bias.copy_(bank.b_out[e:e + 1])
            lin1, lin2 = naive.router[e][0], naive.router[e][2]
            lin1.weight.copy_(router.w1[e].t())
            lin1.bias.copy_(router.b1[e, 0])
            lin2.weight.copy_(router.w2[e][None, :])
            lin2.bias.copy_(router.b2[e:e + 1])

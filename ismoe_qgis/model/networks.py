"""The ISMoE networks: a bank of per-factor CNN-LSTM experts, the routing network, baselines.

Shapes used throughout
----------------------
B  samples, L  sequence length (days), V  input variables, E  experts (= factors),
k  patch size (odd), C  conv channels, Hd LSTM hidden size.

Patch input ``x`` is (B, L, V, k, k), normalised, NaN already replaced by 0.

Every expert is an independent CNN-LSTM that sees only its own factor's variables:
a 1x1 convolution (per-pixel features), then one 'valid' k x k convolution that reduces the
k x k patch to one pixel, an LSTM over the L daily feature vectors and a linear head to one
SM value. All experts run in ONE pass: their convolutions are grouped convolutions
(groups = E, each factor's variables zero-padded to the same channel count) and their
LSTMs are stacked weight tensors driven by batched matrix products. Because the CNN only
uses 'valid' convolutions, applying it to a whole tile (with a k//2 halo) gives, at each
pixel, exactly what it gives for the k x k patch around that pixel: prediction runs the
convolution once per tile and time step (see ``inference.py``).

How the experts are combined is the ``mixture`` (MIXTURE), and so is what a factor's weight means:
- ``convex`` (the paper's literal form): y = sum_e w_e * y_e, w a softmax over experts from the
  router, every y_e a full SM estimate from one factor (the expert loss asks each to explain all of
  SM). Weight = the router's w_e. Measured limit: a convex mix of single-factor estimates cannot add
  up two drivers (s_eq + w f + (1 - w) g is not s_eq + f + g), so on additive SM it loses variance or
  collapses onto one expert.
- ``scaled``: y = mu + E * sum_e w_e * c_e: an intercept mu, experts that output contributions c_e (no
  per-expert SM loss), softmax router weights w (E * w_e = 1 on average). Weight = the router's w_e.
- ``additive``: y = mu + sum_e c_e, no router. Weight of factor e on a pixel-day = its share of the
  squared departure of the contributions from their reference: w_e = d_e^2 / sum_f d_f^2 with
  d_e = c_e - r_e and r_e the expert's mean contribution over training windows where it has signal
  (``contrib_ref``, set after training; the intercept lives in mu, never in a weight). Weights sum to
  1 and average to variance shares over a region or season.
With ``mask_silent`` a factor without signal in the window (below) is left out: weight 0 in the
convex and scaled forms, contribution 0 and weight 0 in the additive form.

The convex, scaled and gated forms' router turns expert evidence into softmax weights. Router inputs
(``router_input``; the default ``auto`` is inputs_mean for gated, expert_states for convex and scaled):
- ``expert_states``: each expert's final LSTM state is scored by that expert's own
  small scoring network; a factor is weighted for what its own input shows, not for the date.
- ``all_states``: one network scores all experts from the concatenated states.
- ``inputs``: the factors' centre-pixel sequences (flattened).
- ``inputs_doy``: as ``inputs`` plus day-of-year sin/cos (the calendar; prone to learning
  the season rather than the driver, kept for comparison).
- ``inputs_mean``: the factors' centre-pixel means over the SEQ_LEN window (the reference ISMoE's router
  input): slow context that tells one climate from another, with little of the day-to-day signal, so a
  gated contribution g_e c_e moves with its own factor (the gate cannot carry another factor's weather).
With ``mask_silent`` (default on) a factor whose input carries no signal (every variable
constant over the L days at the pixel, e.g. snow where there is none) gets weight 0.
"""
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

# the option lists (MEMORY, MIXTURE, ...) and what a weight raster holds per mixture: ismoe_qgis/options.py
from ..options import (MEMORIES, MIXTURE_DEFAULT, MIXTURES, MODEL_TYPES, ROUTER_INPUT_DEFAULT, ROUTER_INPUTS,
                       WEIGHT_MEANING, patch_size_problem, router_input_for)
from .lstm import active_autocast_dtype, sequence_lstm, window_lstm

SILENT_TOL = 1e-4  # range of a normalised variable in a window below which it is silent


@dataclass
class ModelConfig:
    factors: Dict[str, List[str]]          # factor -> its variable names (ordered)
    variables: List[str]                   # all variables in cube order
    model_type: str = "ismoe"
    patch_size: int = 7
    seq_len: int = 14
    conv_channels: int = 16
    hidden: int = 64
    router_hidden: int = 32
    router_input: str = ROUTER_INPUT_DEFAULT   # "auto" is resolved by the mixture in __post_init__
    dropout: float = 0.1
    mask_silent: bool = True
    mixture: str = MIXTURE_DEFAULT
    memory: str = "window"
    spin_up: int = 0            # stateful: days the LSTM runs before the first supervised/output day
    members: int = 1            # ENSEMBLE: members trained together, stacked on the experts' axis
    member_seeds: List[int] = field(default_factory=list)
    # "ensemble": the members are an ensemble (estimate = their mean); "folds": cross-validation (SPLIT=
    # locations|blocks), member k = the model of fold k, trained without fold k's locations (the model
    # file's info["cv"] maps locations to folds; evaluate scores each location with its fold's model)
    member_kind: str = "ensemble"
    x_mean: List[float] = field(default_factory=list)
    x_std: List[float] = field(default_factory=list)
    y_mean: float = 0.0
    y_std: float = 1.0
    version: str = ""

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"MODEL must be one of {', '.join(MODEL_TYPES)}, got '{self.model_type}'")
        if self.mixture not in MIXTURES:
            raise ValueError(f"MIXTURE must be one of {', '.join(MIXTURES)}, got '{self.mixture}'")
        if self.memory not in MEMORIES:
            raise ValueError(f"MEMORY must be one of {', '.join(MEMORIES)}, got '{self.memory}'")
        if self.spin_up < 0:
            raise ValueError(f"SPIN_UP must be >= 0 days, got {self.spin_up}")
        if int(self.members) != self.members or self.members < 1:
            raise ValueError(f"ENSEMBLE must be a number of members >= 1, got {self.members}")
        if self.member_kind not in ("ensemble", "folds"):
            raise ValueError(f"member kind must be ensemble or folds, got '{self.member_kind}'")
        if self.router_input not in ROUTER_INPUTS:
            raise ValueError(f"router input must be one of {', '.join(ROUTER_INPUTS)}, got '{self.router_input}'")
        self.router_input = router_input_for(self.mixture, self.router_input)
        if patch_size_problem(self.patch_size):
            raise ValueError(patch_size_problem(self.patch_size))
        if self.seq_len < 1:
            raise ValueError(f"SEQ_LEN must be >= 1, got {self.seq_len}")
        if not self.factors:
            raise ValueError("at least one factor is needed")
        for f, vs in self.factors.items():
            for v in vs:
                if v not in self.variables:
                    raise ValueError(f"factor '{f}' names variable '{v}' that is not in the dataset")

    @property
    def factor_names(self) -> List[str]:
        return list(self.factors)

    def factor_index(self) -> List[List[int]]:
        return [[self.variables.index(v) for v in vs] for vs in self.factors.values()]

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known.setdefault("mixture", "convex")    # model files from before MIXTURE were all convex
        known.setdefault("router_input", "expert_states")   # ... and from before ROUTER_INPUT routed on states
        return cls(**known)

    @property
    def stateful(self) -> bool:
        return self.memory == "stateful"

    @property
    def context_days(self) -> int:
        """Input days an output day needs before it: SEQ_LEN - 1 (its window; the silent mask and the
        input routers look at the last SEQ_LEN days in both modes), or the spin-up when longer (stateful)."""
        return max(self.seq_len - 1, self.spin_up if self.stateful else 0)

    @property
    def effective_mixture(self) -> str:
        """The mixture the network uses: MIXTURE for ismoe; the baselines are convex (cnn_lstm has one
        expert of weight 1, mean_expert equal weights 1/E)."""
        return self.mixture if self.model_type == "ismoe" else "convex"


def _mean_over_days(seq: torch.Tensor) -> torch.Tensor:
    """(B, L, V) -> (B, V), the mean over the L days added in day order: elementwise adds, so the result does not
    depend on how a reduction kernel splits a strided view (torch's ``mean(1)`` on one differed between processes
    in the 8th digit, which broke resume == uninterrupted across processes)."""
    z = seq[:, 0]
    for i in range(1, seq.shape[1]):
        z = z + seq[:, i]
    return z / seq.shape[1]


def window_rows(seq: torch.Tensor, L: int) -> torch.Tensor:
    """(G, S, ...) daily sequences -> (m * G, L, ...) the m = S - L + 1 windows of L days, row j * G + g
    is the window of sequence g ending at step L - 1 + j (windows are time-major, like the model's outputs)."""
    G, S = seq.shape[:2]
    m = S - L + 1
    w = seq.unfold(1, L, 1)                                  # G, m, ..., L
    w = w.movedim(-1, 2).transpose(0, 1)                     # m, G, L, ...
    return w.reshape(m * G, L, *seq.shape[2:])


def silent_factor_mask(x: torch.Tensor, factor_index: List[List[int]], L: int = None) -> torch.Tensor:
    """(G, S, V, k, k) -> bool (m * G, E) for the windows of L days (default S; m = S - L + 1, rows as
    in ``window_rows``): True where every variable of the factor is constant over the window at the
    centre pixel (the factor carries no signal there, e.g. snow where there is none). The centre
    pixel is always inside the raster, so edge padding cannot fake a signal."""
    k = x.shape[-1]
    c = window_rows(x[:, :, :, k // 2, k // 2], L or x.shape[1])    # m*G, L, V
    rng = c.amax(dim=1) - c.amin(dim=1)                              # m*G, V
    return torch.stack([(rng[:, idx] < SILENT_TOL).all(dim=1) for idx in factor_index], dim=1)


class _PatchConv(torch.autograd.Function):
    """The grouped conv stack on k x k training patches, in chunks of patches, with a backward that
    recomputes each chunk's per-pixel features instead of keeping them.

    Why: the per-pixel features (E x patches x k*k x C floats, 67 MB at 256 windows x 14 days x 6
    experts) are the largest tensor of a training step. Autograd writes them out in the forward and
    reads them back 3-4 times in the backward, from memory; here each chunk's features are rebuilt
    by one small product (the 1x1 conv) and used while they are in cache. Each chunk also gathers
    its experts' input columns itself, so the (patches x experts x inputs) copy never exists whole.
    Measured forward + backward at those sizes (2-core CPU): 21 ms, against 29-35 ms for the same
    chunked products under autograd and ~280 ms for the tile path's grouped F.conv2d. The tests
    check values and gradients against the tile path (float64) and run gradcheck.

    xs (V, N * kk): the patches' pixels as columns, variable-major (patch n's pixels at columns
    n * kk .. n * kk + kk - 1); gidx (cin * E,): at c * E + e, the row of xs that is input c of
    expert e (input-major); w1b (E, cin + 1, C): the 1x1 conv with its bias as the last row (the
    inputs get a row of ones); wk (E, kk * C, C): the k x k conv, rows in (pixel, channel) order.
    Returns (E, N, C). No gradient for xs (the tile path serves input gradients)."""

    @staticmethod
    def forward(ctx, xs, gidx, w1b, wk, bk, kk, chunk):
        E, cin1, C = w1b.shape
        N = xs.shape[1] // kk
        chunk = min(chunk, N)
        bufs = _PatchConv.buffers(xs, E, cin1, C, chunk * kk, w1b.dtype)
        outs = []
        for n0 in range(0, N, chunk):
            n = min(N, n0 + chunk) - n0
            _, z = _PatchConv.pixel_features(xs, gidx, w1b, n0 * kk, n * kk, bufs)
            outs.append(torch.baddbmm(bk[:, None], z.view(E, n, kk * C), wk))
        out = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)).relu_()
        ctx.save_for_backward(xs, gidx, w1b, wk, out)
        ctx.kk, ctx.chunk = kk, chunk
        return out

    @staticmethod
    def backward(ctx, g):
        xs, gidx, w1b, wk, out = ctx.saved_tensors
        kk, chunk = ctx.kk, ctx.chunk
        E, cin1, C = w1b.shape
        N = out.shape[1]
        acc = torch.promote_types(w1b.dtype, torch.float32)      # gradients summed over chunks in fp32
        dz2 = torch.ops.aten.threshold_backward(g.to(out.dtype), out, 0)
        dbk = dz2.sum(1, dtype=acc)
        dwk = torch.zeros(wk.shape, dtype=acc, device=wk.device)
        dw1 = torch.zeros(w1b.shape, dtype=acc, device=wk.device)
        bufs = _PatchConv.buffers(xs, E, cin1, C, chunk * kk, w1b.dtype)
        dzbuf = torch.empty_like(bufs[1])
        wkt = wk.transpose(1, 2)
        for n0 in range(0, N, chunk):
            n = min(N, n0 + chunk) - n0
            xe, z = _PatchConv.pixel_features(xs, gidx, w1b, n0 * kk, n * kk, bufs)   # recomputed
            d = dz2[:, n0:n0 + n]
            dwk += torch.bmm(z.view(E, n, kk * C).transpose(1, 2), d)
            dz = torch.bmm(d, wkt, out=dzbuf[:, :n * kk].view(E, n, kk * C)).view(E, n * kk, C)
            torch.ops.aten.threshold_backward.grad_input(dz, z, 0, grad_input=dz)   # ReLU', in place
            dw1 += torch.bmm(xe, dz)
        return None, None, dw1.to(w1b.dtype), dwk.to(wk.dtype), dbk.to(out.dtype), None, None

    @staticmethod
    def buffers(xs, E, cin1, C, cols, dtype):
        """Work space for chunks of `cols` pixels: the experts' inputs, input-major (cin + 1, E, cols)
        (one index_select fills the first cin rows; the last one holds the ones) and the features."""
        xe = torch.empty((cin1, E, cols), dtype=dtype, device=xs.device)
        xe[-1] = 1.0
        return xe, torch.empty((E, cols, C), dtype=dtype, device=xs.device)

    @staticmethod
    def pixel_features(xs, gidx, w1b, c0, cols, bufs):
        """ReLU(1x1 conv) of pixel columns c0 .. c0 + cols for every expert. Returns the experts'
        inputs (E, cin + 1, cols) and features (E, cols, C), both in `bufs` (fresh ones for a last,
        shorter chunk)."""
        xe, z = bufs
        if xe.shape[2] != cols:
            xe, z = _PatchConv.buffers(xs, xe.shape[1], xe.shape[0], z.shape[2], cols, xe.dtype)
        torch.index_select(xs[:, c0:c0 + cols], 0, gidx, out=xe[:-1].view(-1, cols))
        xe = xe.transpose(0, 1)
        return xe, torch.bmm(xe.transpose(1, 2), w1b, out=z).relu_()


class GroupedConvStack(nn.Module):
    """E independent CNNs in one pass: a 1x1 conv (Cin->C) + ReLU, then one 'valid' k x k conv
    (C->C) + ReLU that reduces a k x k patch to one pixel (receptive field exactly k x k).

    Both are grouped convolutions (one group per expert). An expert with fewer than Cin inputs
    has its missing inputs' weights masked to zero (``in_mask``). Two paths, checked to agree by
    the tests: ``forward`` on tiles (einsum + F.conv2d(groups=E)), and ``patches`` on k x k
    training patches, where the k x k conv is a single batched matrix product over experts (the
    patch IS the im2col column), run in chunks by ``_PatchConv``.
    """

    cpu_patch_chunk = 1536     # patches x experts per chunk of the patch path on a CPU (cache-sized)

    def __init__(self, E: int, cin: int, C: int, k: int, n_inputs: List[int] = None):
        super().__init__()
        self.E, self.C, self.k = E, C, k
        self.w1 = nn.Parameter(torch.empty(E, C, cin).uniform_(-1 / math.sqrt(cin), 1 / math.sqrt(cin)))
        self.b1 = nn.Parameter(torch.empty(E, C).uniform_(-1 / math.sqrt(cin), 1 / math.sqrt(cin)))
        mask = torch.zeros(E, cin)
        for e, n in enumerate(n_inputs or [cin] * E):
            mask[e, :n] = 1.0
        self.register_buffer("in_mask", mask, persistent=False)
        if k > 1:
            s = 1 / math.sqrt(k * k * C)
            self.wk = nn.Parameter(torch.empty(E, C, C * k * k).uniform_(-s, s))
            self.bk = nn.Parameter(torch.empty(E, C).uniform_(-s, s))

    def w1_masked(self) -> torch.Tensor:
        """(E, C, cin) 1x1 conv weights, zero for an expert's missing inputs."""
        return self.w1 * self.in_mask[:, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, E, cin, h, w) -> (N, E, C, h - k + 1, w - k + 1)."""
        N, E, cin, h, w = x.shape
        C, k = self.C, self.k
        z = torch.einsum("neihw,eoi->neohw", x, self.w1_masked()) + self.b1[None, :, :, None, None]
        z = torch.relu(z)
        if k == 1:
            return z
        weight = self.wk.reshape(E * C, C, k, k)
        z = F.conv2d(z.reshape(N, E * C, h, w), weight, self.bk.reshape(-1), groups=E)
        return torch.relu(z).view(N, E, C, h - k + 1, w - k + 1)

    def patches(self, xs: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
        """k x k patches given as pixel columns xs (V, N * k * k) (variable-major, each patch's pixels
        in raster order); gidx (E * cin,) each expert's input rows of xs. -> (E, N, C)."""
        E, C, k = self.E, self.C, self.k
        kk = k * k
        # wk is viewed in the patch rows' (pixel, channel) order
        wk = self.wk.view(E, C, C, kk).transpose(2, 3).reshape(E, C, kk * C).transpose(1, 2)
        w1b = torch.cat([self.w1_masked().transpose(1, 2), self.b1[:, None, :]], dim=1)   # E, cin + 1, C
        gidx = gidx.view(E, -1).t().reshape(-1)                                    # input-major
        args = (xs, gidx, w1b, wk, self.bk)
        chunk = xs.shape[1] // kk if xs.device.type == "cuda" else max(1, self.cpu_patch_chunk // E)
        dt = active_autocast_dtype(xs)
        if dt is None:
            return _PatchConv.apply(*args, kk, chunk)
        with torch.autocast(xs.device.type, enabled=False):        # autocast's dtype, by hand
            return _PatchConv.apply(*(a if a is gidx else a.to(dt) for a in args), kk, chunk)


class ExpertBank(nn.Module):
    """E independent CNN-LSTM experts computed together (grouped conv + stacked LSTM)."""

    def __init__(self, factor_index: List[List[int]], n_variables: int, patch_size: int,
                 conv_channels: int, hidden: int, dropout: float):
        super().__init__()
        self.E = len(factor_index)
        self.vmax = max(len(i) for i in factor_index)
        self.k = patch_size
        self.C = conv_channels
        self.H = hidden
        # gather index: each expert's variables, padded to vmax by repeating its first one (the
        # conv masks a padded input's weights to zero)
        gidx = []
        for idx in factor_index:
            gidx += list(idx) + [idx[0]] * (self.vmax - len(idx))
        self.register_buffer("gather_index", torch.tensor(gidx, dtype=torch.long), persistent=False)
        E, C = self.E, self.C
        self.cnn = GroupedConvStack(E, self.vmax, C, patch_size, [len(i) for i in factor_index])
        s_ih, s_hh = 1.0 / math.sqrt(C), 1.0 / math.sqrt(hidden)
        self.w_ih = nn.Parameter(torch.empty(E, C, 4 * hidden).uniform_(-s_ih, s_ih))
        self.w_hh = nn.Parameter(torch.empty(E, hidden, 4 * hidden).uniform_(-s_hh, s_hh))
        # gate order along the last axis: input, forget, output (sigmoid), cell candidate (tanh)
        b = torch.zeros(E, 4 * hidden)
        b[:, hidden:2 * hidden] = 1.0  # forget-gate bias
        self.b = nn.Parameter(b)
        self.drop = nn.Dropout(dropout)
        self.w_out = nn.Parameter(torch.empty(E, hidden).uniform_(-s_hh, s_hh))
        self.b_out = nn.Parameter(torch.zeros(E))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutional features of tiles. x: (N, V, h, w) -> (N, E, C, h-k+1, w-k+1)."""
        N, _, h, w = x.shape
        return self.cnn(x.index_select(1, self.gather_index).view(N, self.E, self.vmax, h, w))

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutional features of k x k patches. x: (N, V, k, k) -> (E, N, C). Variable-major
        memory (x.transpose(0, 1) contiguous, as WindowSampler gives) is read without a copy."""
        N, V, k, _ = x.shape
        if k == 1 or x.requires_grad:       # nothing to chunk / input gradients: the tile path
            return self.features(x).view(N, self.E, self.C).transpose(0, 1)
        return self.cnn.patches(x.transpose(0, 1).reshape(V, N * k * k), self.gather_index)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """(E, M, H) -> (M, E) expert outputs."""
        return (torch.einsum("emh,eh->em", self.drop(h), self.w_out) + self.b_out[:, None]).t()

    def windows(self, feats: torch.Tensor, L: int) -> torch.Tensor:
        """Run the LSTM over every window of L steps. feats (E, S, n, C): per-step features of n
        sequences, time-major. Returns h (E, m * n, H) for the m = S - L + 1 windows, row j * n + i
        = the window of sequence i ending at step L - 1 + j (see ``lstm.window_lstm``)."""
        return window_lstm(feats, self.w_ih, self.b, self.w_hh, L)

    def sequence(self, feats: torch.Tensor, n_out: int = None, state=None):
        """Stateful experts: the LSTM through feats (E, S, n, C) (time-major) from zero state or `state`
        (h, c) (E, n, H). Returns h (E, n_out * n, H) of the last n_out steps (default all), rows
        j * n + i as ``windows``, and the final state (see ``lstm.sequence_lstm``)."""
        return sequence_lstm(feats, self.w_ih, self.b, self.w_hh, n_out, state)

    def forward(self, x: torch.Tensor, L: int = None, n_out: int = None, spin_up: int = 0):
        """Windowed (n_out None): x (G, S, V, k, k), S = L + m - 1 consecutive days of G patches (default
        L = S, m = 1). -> expert outputs (m * G, E) and final states (E, m * G, H) of the m windows of L
        days per patch (rows as in ``window_rows``). The convolution runs once per day, however many
        windows share it.
        Stateful (n_out given): the LSTM runs from zero state over the last spin_up + n_out days of x and
        outputs its last n_out days (rows j * G + g likewise); earlier days of x are not used."""
        if n_out is not None:
            if x.shape[1] < spin_up + n_out:
                raise ValueError(f"{spin_up} spin-up + {n_out} output days need as many days, got {x.shape[1]}")
            x = x[:, x.shape[1] - (spin_up + n_out):]
        G, S, V, k, _ = x.shape
        f = self.patch_features(x.reshape(G * S, V, k, k))       # E, G*S, C
        f = f.view(self.E, G, S, self.C).transpose(1, 2)         # features time-major
        h = self.windows(f, L or S) if n_out is None else self.sequence(f, n_out)[0]
        return self.head(h), h


class Router(nn.Module):
    """Router logits over experts, for N ensemble members at once (members stacked like the experts:
    expert e of member n at n * E + e). The expert_states router's per-expert scoring networks are stacked
    weights over the N * E experts; the other kinds have one small MLP per member."""

    def __init__(self, cfg: ModelConfig, E: int, members: int = 1):
        super().__init__()
        self.kind = cfg.router_input
        self.E, self.N = E, members
        R = cfg.router_hidden
        if self.kind != "expert_states":
            self.mlps = nn.ModuleList(self._mlp(cfg, E) for _ in range(members))
            return
        E = E * members
        s = 1.0 / math.sqrt(cfg.hidden)
        self.w1 = nn.Parameter(torch.empty(E, cfg.hidden, R).uniform_(-s, s))
        self.b1 = nn.Parameter(torch.zeros(E, 1, R))
        self.w2 = nn.Parameter(torch.empty(E, R).uniform_(-1.0 / math.sqrt(R), 1.0 / math.sqrt(R)))
        self.b2 = nn.Parameter(torch.zeros(E))

    def _mlp(self, cfg, E):
        if self.kind == "all_states":
            n_in = E * cfg.hidden
        elif self.kind == "inputs_mean":
            n_in = len(cfg.variables)
        else:
            n_in = cfg.seq_len * len(cfg.variables) + (2 if self.kind == "inputs_doy" else 0)
        R = cfg.router_hidden
        return nn.Sequential(nn.Linear(n_in, R), nn.ReLU(), nn.Linear(R, E))

    def forward(self, states, centre_seq=None, doy=None):
        """states (N * E, B, H); centre_seq (B, L, V); doy (B,) -> logits (B, N, E)."""
        B = states.shape[1]
        if self.kind == "expert_states":
            z = torch.relu(torch.baddbmm(self.b1, states, self.w1))        # N*E, B, R
            return (torch.einsum("ebr,er->eb", z, self.w2) + self.b2[:, None]).t().reshape(B, self.N, self.E)
        if self.kind == "all_states":
            st = states.view(self.N, self.E, B, -1)
            return torch.stack([mlp(st[n].permute(1, 0, 2).flatten(1)) for n, mlp in enumerate(self.mlps)], 1)
        z = _mean_over_days(centre_seq) if self.kind == "inputs_mean" else centre_seq.flatten(1)
        if self.kind == "inputs_doy":
            ang = 2 * math.pi * doy.float() / 365.25
            z = torch.cat([z, torch.sin(ang)[:, None], torch.cos(ang)[:, None]], dim=1)
        return torch.stack([mlp(z) for mlp in self.mlps], 1)


class SoilMoistureNet(nn.Module):
    """ISMoE and its baselines behind one interface.

    forward(x, doy) -> (y (B,), weights (B, E), expert_outputs (B, E)), y in normalised units
    (expert outputs: SM estimates in the convex form, contributions otherwise; see ``mix``).
    - ismoe:       per-factor experts combined by MIXTURE (module doc).
    - mean_expert: the same per-factor experts, equal weights 1/E.
    - cnn_lstm:    one CNN-LSTM over all variables (E = 1, weight 1, factor 'all').
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.model_type == "cnn_lstm":
            index = [list(range(len(cfg.variables)))]
            self.output_names = ["all"]
        else:
            index = cfg.factor_index()
            self.output_names = cfg.factor_names
        self.factor_index = index
        self.mixture = cfg.effective_mixture
        N = self.members = int(cfg.members)
        # ENSEMBLE: the N members' experts are stacked on the experts' axis (expert e of member n at n * E + e),
        # so one pass trains and runs them all, the way the experts of one model are already batched
        self.experts = ExpertBank(index * N, len(cfg.variables), cfg.patch_size, cfg.conv_channels,
                                  cfg.hidden, cfg.dropout)
        routed = cfg.model_type == "ismoe" and self.mixture in ("convex", "scaled", "gated")
        self.router = Router(cfg, len(index), N) if routed else None
        shape = () if N == 1 else (N,)          # one member keeps the shapes of files from before ENSEMBLE
        if self.mixture in ("scaled", "additive", "gated"):
            self.mu = nn.Parameter(torch.zeros(shape))          # the intercept, never an expert's
        if self.mixture in ("additive", "gated"):
            # each expert's mean contribution where it has signal (set after training): weights are
            # shares of the departures from it
            self.register_buffer("contrib_ref", torch.zeros(shape + (len(index),)))

    def load_state_dict(self, state_dict, strict: bool = True, **kw):
        """Also reads files from before ENSEMBLE, whose MLP routers were one module 'router.mlp'."""
        state_dict = {(k.replace("router.mlp.", "router.mlps.0.", 1) if k.startswith("router.mlp.") else k): v
                      for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, **kw)

    @property
    def n_experts(self):
        return len(self.factor_index)

    @property
    def masks_silent(self) -> bool:
        """Whether factors without signal in a window are left out (ismoe with MASK_SILENT)."""
        return self.cfg.model_type == "ismoe" and self.cfg.mask_silent

    @property
    def weight_meaning(self) -> str:
        return WEIGHT_MEANING[self.mixture]

    def mix(self, expert_out, states, silent=None, centre_seq=None, doy=None):
        """Combine expert outputs (B, N * E) into (y (B,), weights (B, E), contributions (B, E)): the
        mixture's estimate, the per-factor weights (their meaning: ``WEIGHT_MEANING``) and what each
        expert put in (its SM estimate in the convex form, its contribution c_e otherwise, 0 where a
        factor is left out as silent), as the means over the ensemble's members (``mix_members``)."""
        y, w, c = self.mix_members(expert_out, states, silent, centre_seq, doy)
        if self.members == 1:
            return y[:, 0], w[:, 0], c[:, 0]
        return y.mean(1), w.mean(1), c.mean(1)

    def mix_members(self, expert_out, states, silent=None, centre_seq=None, doy=None):
        """``mix`` per member: (y (B, N), weights (B, N, E), contributions (B, N, E)). silent (B, E) is the
        same for every member (it depends on the input only)."""
        B = expert_out.shape[0]
        N, E = self.members, self.n_experts
        out = expert_out.float().view(B, N, E)
        leave_out = silent[:, None, :] if silent is not None and self.masks_silent else None
        if leave_out is not None and self.mixture != "additive":
            leave_out = leave_out & ~leave_out.all(dim=2, keepdim=True)     # a softmax needs one expert
        if self.mixture == "additive":
            return self._shares(out, leave_out)
        if self.router is None:
            w = out.new_full((B, N, E), 1.0 / E)
        else:
            logits = self.router(states, centre_seq, doy).float()
            if leave_out is not None:
                logits = logits.masked_fill(leave_out, float("-inf"))
            w = torch.softmax(logits, dim=2)
        if self.mixture == "gated":                 # contributions gated by the router: E w_e c_e
            # the gates of the last training forward, for the loss's gate-smoothness term (train.loss_terms)
            self.train_gates = E * w if self.training else None
            return self._shares(E * w * out, leave_out)
        if self.mixture == "scaled":
            if leave_out is not None:
                out = out.masked_fill(leave_out, 0.0)
            return self.mu.view(-1) + E * (w * out).sum(dim=2), w, out
        return (w * out).sum(dim=2), w, out

    def _shares(self, contrib, leave_out):
        """SM = mu + the sum of the contributions (B, N, E); weights = each contribution's share of the squared
        departures from the reference ``contrib_ref``. Silent factors contribute 0 and weigh 0."""
        d = contrib - self.contrib_ref.view(-1, contrib.shape[2])
        if leave_out is not None:
            contrib, d = contrib.masked_fill(leave_out, 0.0), d.masked_fill(leave_out, 0.0)
        d2 = d * d
        return self.mu.view(-1) + contrib.sum(dim=2), d2 / d2.sum(dim=2, keepdim=True).clamp_min(1e-12), contrib

    def forward(self, x, doy=None):
        """The ensemble mean (one member: the model) of ``forward_members``: (y (B,), weights (B, E),
        expert outputs (B, E))."""
        y, w, c = self.forward_members(x, doy)
        if self.members == 1:
            return y[:, 0], w[:, 0], c[:, 0]
        return y.mean(1), w.mean(1), c.mean(1)

    def forward_members(self, x, doy=None):
        """Per member: (y (B, N), weights (B, N, E), expert outputs (B, N, E)).
        x (G, S, V, k, k) with S >= seq_len: the m = S - seq_len + 1 windows of every patch sequence
        (m = 1 for single windows). Stateful memory: the m = S - context_days last days of every sequence
        are outputs, the LSTM starting from zero state SPIN_UP days before the first. doy (m * G,) the day of year of each window's last day (router
        input 'inputs_doy' only). Rows are time-major, j * G + g (see ``window_rows``)."""
        L = self.cfg.seq_len
        if x.shape[1] < L:
            raise ValueError(f"the model needs windows of SEQ_LEN={L} days, got {x.shape[1]}")
        if self.cfg.stateful:
            m = x.shape[1] - self.cfg.context_days
            if m < 1:
                raise ValueError(f"a stateful model needs sequences of more than its {self.cfg.context_days} "
                                 f"context days (SPIN_UP {self.cfg.spin_up}, SEQ_LEN {L}), got {x.shape[1]}")
            out, states = self.experts(x, n_out=m, spin_up=self.cfg.spin_up)
            x = x[:, x.shape[1] - (m + L - 1):]          # the SEQ_LEN-day windows of the m output days
        else:
            out, states = self.experts(x, L)
        silent = silent_factor_mask(x, self.factor_index, L) if self.masks_silent else None
        k = self.cfg.patch_size
        centre = (window_rows(x[:, :, :, k // 2, k // 2], L)
                  if self.router is not None and self.cfg.router_input.startswith("inputs") else None)
        return self.mix_members(out, states, silent, centre, doy)


def _member_rule(name: str):
    """How parameter/buffer `name` of an ensemble holds its members: ('experts', None) stacked N * E on
    dim 0; ('member', None) indexed by member on dim 0 (mu, contrib_ref); ('mlp', rest) one router MLP
    per member ('router.mlps.<n>.<rest>')."""
    if name.startswith("experts.") or name in ("router.w1", "router.b1", "router.w2", "router.b2"):
        return "experts", None
    if name in ("mu", "contrib_ref"):
        return "member", None
    if name.startswith("router.mlps."):
        return "mlp", name.split(".", 3)[3]
    raise ValueError(f"no member rule for parameter '{name}'")


def member_model(model: "SoilMoistureNet", n: int) -> "SoilMoistureNet":
    """Member n of an ensemble as a model of its own (members = 1), weights copied."""
    import dataclasses
    N, E = model.members, model.n_experts
    if not 0 <= n < N:
        raise ValueError(f"the ensemble has members 0..{N - 1}, got {n}")
    seeds = list(model.cfg.member_seeds or [])
    cfg = dataclasses.replace(model.cfg, members=1, member_seeds=seeds[n:n + 1])
    single = SoilMoistureNet(cfg)
    state = {}
    for k, v in model.state_dict().items():
        rule, rest = _member_rule(k)
        if rule == "experts":
            state[k] = v[n * E:(n + 1) * E]
        elif rule == "member":
            state[k] = v if N == 1 else v[n]
        elif k.startswith(f"router.mlps.{n}."):
            state[f"router.mlps.0.{rest}"] = v
    single.load_state_dict(state)
    return single.to(next(model.parameters()).device).train(model.training)


def stack_members(models: List["SoilMoistureNet"]) -> "SoilMoistureNet":
    """One ensemble model (members = len(models)) holding the given single models' weights, in order."""
    import dataclasses
    first = models[0]
    if any(m.members != 1 for m in models):
        raise ValueError("stack_members takes single models (members = 1)")
    seeds = [s for m in models for s in (m.cfg.member_seeds or [None])]
    cfg = dataclasses.replace(first.cfg, members=len(models),
                              member_seeds=seeds if all(s is not None for s in seeds) else [])
    ens = SoilMoistureNet(cfg)
    states = [m.state_dict() for m in models]
    out = {}
    for k in ens.state_dict():
        rule, rest = _member_rule(k)
        if rule == "experts":
            out[k] = torch.cat([st[k] for st in states], 0)
        elif rule == "member":
            out[k] = states[0][k] if len(models) == 1 else torch.stack([st[k] for st in states], 0)
        else:
            n = int(k.split(".")[2])
            out[k] = states[n][f"router.mlps.0.{rest}"]
    ens.load_state_dict(out)
    return ens.to(next(first.parameters()).device).train(first.training)


def member_seeds(seed: int, members: int) -> List[int]:
    """The initial-weight seeds of an ensemble's members: `seed` for a single model; for N > 1, N seeds
    spawned from `seed` (numpy SeedSequence), so that ensembles of neighbouring seeds share no member."""
    if members == 1:
        return [int(seed)]
    import numpy as np
    return [int(s.generate_state(1)[0] % (2 ** 31 - 1)) for s in np.random.SeedSequence(int(seed)).spawn(members)]


def copy_members(dst: dict, src: dict, members, n_members: int, n_experts: int):
    """In the state dict `dst`, replace the weights of the given members by those in `src` (same layout)."""
    E = n_experts
    for k, v in src.items():
        rule, _ = _member_rule(k)
        for n in members:
            if rule == "experts":
                dst[k][n * E:(n + 1) * E] = v[n * E:(n + 1) * E]
            elif rule == "member":
                if n_members == 1:
                    dst[k] = v.clone()
                else:
                    dst[k][n] = v[n]
            elif k.startswith(f"router.mlps.{n}."):
                dst[k] = v.clone()


def build_model(cfg: ModelConfig, seed: int) -> "SoilMoistureNet":
    """A new model, its weights drawn from `seed`; an ensemble's member n from ``member_seeds(seed, N)[n]``
    (member n starts as the single model of that seed would). Sets cfg.member_seeds."""
    import dataclasses
    seeds = member_seeds(seed, int(cfg.members))
    singles = []
    for s in seeds:
        torch.manual_seed(s)
        singles.append(SoilMoistureNet(dataclasses.replace(cfg, members=1, member_seeds=[s])))
    model = singles[0] if len(singles) == 1 else stack_members(singles)
    model.cfg.member_seeds = seeds
    return model

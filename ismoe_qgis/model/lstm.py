"""The experts' LSTM: E independent LSTMs (stacked weights, batched products) run over every
window of L steps of a sequence of per-step features, with a hand-written backward.

Why hand-written: autograd records ~10 small ops per step and keeps each intermediate; its
backward then replays them one by one, allocates a full-size gradient for every window slice,
and accumulates the recurrent weight's gradient op by op. Here the forward keeps only what the
backward needs (per step: the gate activations, the cell state, its tanh and the hidden state),
and the backward is the textbook LSTM backward: per step a few element-wise products written
into a preallocated gate gradient, one batched product for the input's and the state's gradients
and one for the weights' (input, recurrent and bias at once; see ``_steps_train``). Measured
forward + backward including the input projection (6 experts, 256 windows of 14 steps, 16 input
features, hidden 64, 2-core CPU): 24 ms, against 69 ms for the same LSTM in plain autograd ops.
``tests/test_model.py`` checks it against autograd on the same function (values and gradients,
float64, gradcheck) and against ``torch.nn.LSTM``.

Layout: feats (E, S, n, C), time-major; the input projection w_ih (E, C, 4H) and bias b (E, 4H)
give the gates (E, S, n, 4H), gate order along the last axis (i, f, o | g): input, forget and
output gates (sigmoid), then the cell candidate (tanh); w_hh (E, H, 4H) is the recurrent weight.
The m = S - L + 1 windows of sequence i start at steps 0..m-1; window j's step s reads sequence
step j + s, so step s of all windows at once is the view feats[:, s:s + m] (no L-fold copy). In
inference the projection runs once per sequence step for all the windows that share it; in
training (m small) once per window step, in cache (see ``_steps_train``). Output h (E, m * n, H),
row j * n + i: the final hidden state of each window (each window starts from zero state).
Under autocast everything runs in autocast's dtype (the backward in fp32).
"""
import torch


def _activate_(a, H):
    """In place: sigmoid on the (i, f, o) gates, tanh on the cell candidate. On a CPU, tanh is taken
    as 2 * sigmoid(2x) - 1 (the same function to float rounding, ~1e-7), because torch's CPU tanh
    kernel is 4-6x slower than its sigmoid and was a third of the prediction time."""
    if a.device.type == "cpu":
        g = a[..., 3 * H:]
        g.mul_(2)
        a.sigmoid_()
        g.mul_(2).sub_(1)
    else:
        a[..., :3 * H].sigmoid_()
        a[..., 3 * H:].tanh_()
    return a


def _tanh(t):
    """tanh(t) as a new tensor (see ``_activate_`` for the CPU form)."""
    if t.device.type == "cpu":
        return torch.mul(t, 2).sigmoid_().mul_(2).sub_(1)
    return torch.tanh(t)


def active_autocast_dtype(t: torch.Tensor):
    """The dtype autocast would run a matrix product on `t`'s device in, or None when it is off."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def _window_block(t, s, m):
    """(E, S, n, X) -> (E, m * n, X): step s of all m windows (sequence steps s .. s + m - 1)."""
    E, _, n, X = t.shape
    return t[:, s:s + m].reshape(E, m * n, X)


def _cell(a, c, H, h_out=None):
    """One LSTM step from the pre-activations a (E, M, 4H) (activated in place) and the previous
    cell state c (None at the first step). Returns the cell state, its tanh and h (in h_out if given)."""
    _activate_(a, H)
    i, f, o, u = a[..., :H], a[..., H:2 * H], a[..., 2 * H:3 * H], a[..., 3 * H:]
    c = i * u if c is None else torch.addcmul(f * c, i, u)
    tc = _tanh(c)
    return c, tc, torch.mul(o, tc, out=h_out) if h_out is not None else o * tc


def _steps(feats, w_ih, b, w_hh, L, n_out=1, state=None):
    """Inference forward: final h (n_out = 1) or the h of the last n_out steps (one sequence, m = 1),
    from zero state or from `state` (h0, c0) (E, m * n, H) each. Returns (h, (h_last, c_last)). The input
    projection of every sequence step runs once for all the (many, overlapping: m ~ T) windows that
    share it, as one batched product."""
    E, S, n, C = feats.shape
    G4 = w_hh.shape[2]
    H, m = G4 // 4, S - L + 1
    # windows (m > 1) share each step's input projection: computed once for all steps. One sequence (m = 1,
    # stateful streaming over many pixels): per step, so the gates stay in cache (all steps' gates of a
    # 1024-pixel chunk over 64 days are 400 MB)
    gates = torch.bmm(feats.reshape(E, S * n, C), w_ih).view(E, S, n, G4) if m > 1 else None
    b = b[:, None, :]
    h, c = (None, None) if state is None else state
    outs = feats.new_empty((E, n_out, m * n, H)) if n_out > 1 else None
    for s in range(L):
        # the bias is added here: a broadcast bias as baddbmm's input is copied out to full size first
        if gates is not None:
            a = torch.add(_window_block(gates, s, m), b)
        else:
            a = torch.bmm(feats[:, s], w_ih).add_(b)
        if h is not None:
            a.baddbmm_(h, w_hh)
        j = s - (L - n_out)
        c, _, h = _cell(a, c, H, outs[:, j] if outs is not None and j >= 0 else None)
    return (h if outs is None else outs.view(E, n_out * m * n, H)), (h, c)


def _steps_train(feats, w, L):
    """Training forward, keeping what the backward needs. Each step multiplies [x_s, h_{s-1}, 1]
    (E, M, C + H + 1) by the stacked weight w = [w_ih; w_hh; b] (E, C + H + 1, 4H), one product: the
    input projection runs per window step (m is small in training), so the gates of all steps
    (E x S x n x 4H floats, 22 MB at 256 windows) are never written out, h is written straight
    into the next step's input, and the bias gradient comes out of the weight gradient's product."""
    E, S, n, C = feats.shape
    K, G4 = w.shape[1:]
    H, m = G4 // 4, S - L + 1
    M = m * n
    xh = feats.new_zeros((E, M, K))          # h_{-1} = 0
    c = None
    inputs, acts, cells, tanhs = [], [], [], []
    for s in range(L):
        xh[..., :C] = _window_block(feats, s, m)
        xh[..., -1] = 1.0
        a = torch.bmm(xh, w)
        nxt = feats.new_empty((E, M, K)) if s < L - 1 else None
        c, tc, h = _cell(a, c, H, None if nxt is None else nxt[..., C:C + H])
        inputs.append(xh)
        acts.append(a)
        cells.append(c)
        tanhs.append(tc)
        xh = nxt
    return h, inputs, acts, cells, tanhs


class _WindowLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats, w_ih, b, w_hh, L, n_out):
        dt = feats.dtype
        w = torch.cat([w_ih, w_hh, b[:, None, :]], dim=1).to(dt)
        h, inputs, acts, cells, tanhs = _steps_train(feats, w, L)
        ctx.L, ctx.n_out, ctx.dtypes, ctx.shape = L, n_out, (dt, w_hh.dtype), feats.shape
        ctx.save_for_backward(w, *inputs, *acts, *cells, *tanhs)
        if n_out > 1:   # the h of steps L - n_out .. L - 2 are the next steps' inputs (one sequence, m = 1)
            C = feats.shape[3]
            H = h.shape[2]
            h = torch.stack([inputs[s][..., C:C + H] for s in range(L - n_out + 1, L)] + [h], dim=1)
            h = h.reshape(h.shape[0], -1, H)
        return h

    @staticmethod
    def backward(ctx, dh):
        L, n_out = ctx.L, ctx.n_out
        E, S, n, C = ctx.shape
        m = S - L + 1
        w, *rest = ctx.saved_tensors
        inputs, acts, cells, tanhs = rest[:L], rest[L:2 * L], rest[2 * L:3 * L], rest[3 * L:]
        M, G4 = m * n, w.shape[2]
        H = G4 // 4
        ct = torch.promote_types(ctx.dtypes[0], torch.float32)    # bf16 forward: fp32 backward
        w = w.to(ct)
        wt = w[:, :C + H].transpose(1, 2)
        dh = dh.to(ct)
        d_out = None
        if n_out > 1:                       # gradients of the last n_out steps' outputs
            d_out = dh.view(E, n_out, m * n, H)
            dh = d_out[:, -1]
        dfeats = torch.zeros((E, S, n, C), dtype=ct, device=dh.device)
        dw = torch.zeros_like(w)
        dg = torch.empty((E, M, G4), dtype=ct, device=dh.device)  # the step's gate gradients
        sig_bwd, tanh_bwd = torch.ops.aten.sigmoid_backward, torch.ops.aten.tanh_backward   # g * y' from y
        dc = f_next = None
        for s in range(L - 1, -1, -1):
            j = s - (L - n_out)
            if d_out is not None and 0 <= j < n_out - 1:
                dh = dh + d_out[:, j]
            a, tc = acts[s].to(ct), tanhs[s].to(ct)
            i, f, o, u = a[..., :H], a[..., H:2 * H], a[..., 2 * H:3 * H], a[..., 3 * H:]
            dc_next = dc
            dc = tanh_bwd(dh * o, tc)
            if dc_next is not None:
                dc.addcmul_(dc_next, f_next)
            # d(activation) of (i, f, o, g), then times activation'(.) from the saved activations, in place
            torch.mul(dc, u, out=dg[..., :H])
            if s > 0:
                torch.mul(dc, cells[s - 1].to(ct), out=dg[..., H:2 * H])
            else:
                dg[..., H:2 * H].zero_()
            torch.mul(dh, tc, out=dg[..., 2 * H:3 * H])
            torch.mul(dc, i, out=dg[..., 3 * H:])
            sig_bwd.grad_input(dg[..., :3 * H], a[..., :3 * H], grad_input=dg[..., :3 * H])
            tanh_bwd.grad_input(dg[..., 3 * H:], u, grad_input=dg[..., 3 * H:])
            dw.baddbmm_(inputs[s].to(ct).transpose(1, 2), dg)      # w_ih, w_hh and b at once
            dxh = torch.bmm(dg, wt)                                # E, M, C + H: d x_s and d h_{s-1}
            # window step s of the m windows reads sequence steps s .. s + m - 1 (windows overlap: a
            # sequence step gathers gradient from every window that holds it)
            dfeats[:, s:s + m] += dxh[..., :C].view(E, m, n, C)
            dh, f_next = dxh[..., C:], f
        d = ctx.dtypes
        return dfeats.to(d[0]), dw[:, :C].to(d[1]), dw[:, -1].to(d[1]), dw[:, C:C + H].to(d[1]), None, None


def window_lstm(feats: torch.Tensor, w_ih: torch.Tensor, b: torch.Tensor, w_hh: torch.Tensor,
                L: int) -> torch.Tensor:
    """Final hidden states (E, m * n, H) of the LSTM over every window of L steps of feats (E, S, n, C)
    (see module doc). Under autocast, in autocast's dtype."""
    if feats.shape[1] < L:
        raise ValueError(f"windows of {L} steps need at least {L} steps, got {feats.shape[1]}")
    return _run(feats, w_ih, b, w_hh, L, 1, None)[0]


def sequence_lstm(feats: torch.Tensor, w_ih: torch.Tensor, b: torch.Tensor, w_hh: torch.Tensor,
                  n_out: int = None, state=None):
    """The LSTM over whole sequences (stateful experts): feats (E, S, n, C), from zero state or from
    `state` (h0, c0) (E, n, H) each. Returns (h (E, n_out * n, H) of the last n_out steps (default all S),
    row j * n + i = step S - n_out + j of sequence i (time-major, as ``window_lstm``'s windows), and the
    final state (h, c) to carry into the next time chunk). A given state is for inference only (no
    gradient flows into it); the final state is returned without gradient."""
    S = feats.shape[1]
    n_out = S if n_out is None else n_out
    if not 1 <= n_out <= S:
        raise ValueError(f"the LSTM can output 1..{S} of its {S} steps, got {n_out}")
    return _run(feats, w_ih, b, w_hh, S, n_out, state)


def _run(feats, w_ih, b, w_hh, L, n_out, state):
    dt = active_autocast_dtype(feats)
    with torch.autocast(feats.device.type, enabled=False):
        if dt is not None:
            feats = feats.to(dt)
        if state is None and torch.is_grad_enabled() and any(t.requires_grad for t in (feats, w_ih, b, w_hh)):
            return _WindowLSTM.apply(feats, w_ih, b, w_hh, L, n_out), None
        dt = feats.dtype
        if state is not None:
            state = tuple(t.to(dt) for t in state)
        with torch.no_grad():
            return _steps(feats, w_ih.to(dt), b.to(dt), w_hh.to(dt), L, n_out, state)

"""Stateful experts (MEMORY=stateful): the sequence LSTM against autograd, streaming prediction over
time chunks equal to one pass over the whole sequence, tile equal to patch, the windowed special case
equal to today's windowed model, the model file, warm-up handling and bad input."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ismoe_qgis.model import inference  # noqa: E402
from ismoe_qgis.model.io import load_model, save_model  # noqa: E402
from ismoe_qgis.model.lstm import sequence_lstm  # noqa: E402
from ismoe_qgis.model.networks import ModelConfig  # noqa: E402
from ismoe_qgis.model.sample_inference import predict_samples, sample_runs  # noqa: E402
from ismoe_qgis.model.sampler import WindowSampler  # noqa: E402
from ismoe_qgis.model.train import TrainConfig, loss_terms, train  # noqa: E402

from test_model import make_model, small_cube  # noqa: E402


def autograd_sequence(feats, w_ih, b, w_hh, state=None):
    """Reference LSTM in plain autograd ops, gate order (i, f, o, g); h of every step (E, S, n, H)."""
    E, S, n, _ = feats.shape
    H = w_hh.shape[1]
    h = feats.new_zeros(E, n, H) if state is None else state[0]
    c = feats.new_zeros(E, n, H) if state is None else state[1]
    hs = []
    for s in range(S):
        a = torch.bmm(feats[:, s], w_ih) + b[:, None] + torch.bmm(h, w_hh)
        i, f, o = (torch.sigmoid(a[..., j * H:(j + 1) * H]) for j in range(3))
        g = torch.tanh(a[..., 3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        hs.append(h)
    return torch.stack(hs, 1), (h, c)


def lstm_args(E=3, S=11, n=4, C=5, H=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, sc=0.4: (torch.randn(*s, generator=g, dtype=torch.float64) * sc).requires_grad_()  # noqa: E731
    return mk(E, S, n, C, sc=1.0), mk(E, C, 4 * H), mk(E, 4 * H, sc=0.1), mk(E, H, 4 * H)


@pytest.mark.parametrize("n_out", [1, 3, 11])
def test_sequence_lstm_values_and_gradients_equal_autograd(n_out):
    feats, w_ih, b, w_hh = lstm_args()
    h, _ = sequence_lstm(feats, w_ih, b, w_hh, n_out)
    ref, _ = autograd_sequence(feats, w_ih, b, w_hh)
    E, S, n, H = ref.shape
    ref = ref[:, S - n_out:].reshape(E, n_out * n, H)            # rows time-major, j * n + i
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(h)
    got = torch.autograd.grad((h * g).sum(), (feats, w_ih, b, w_hh))
    want = torch.autograd.grad((ref * g).sum(), (feats, w_ih, b, w_hh))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


def test_sequence_lstm_gradcheck():
    feats, w_ih, b, w_hh = lstm_args(E=2, S=5, n=2, C=3, H=2)
    assert torch.autograd.gradcheck(lambda *a: sequence_lstm(*a, 3)[0], (feats, w_ih, b, w_hh))


@pytest.mark.parametrize("split", [1, 4, 7, 10])
def test_sequence_lstm_state_carried_across_chunks_equals_one_pass(split):
    feats, w_ih, b, w_hh = (t.detach() for t in lstm_args())
    whole, (hw, cw) = sequence_lstm(feats, w_ih, b, w_hh)
    h1, st = sequence_lstm(feats[:, :split], w_ih, b, w_hh)
    h2, (hl, cl) = sequence_lstm(feats[:, split:], w_ih, b, w_hh, state=st)
    E, S, n, _ = feats.shape
    H = w_hh.shape[1]
    both = torch.cat([h1.view(E, split, n, H), h2.view(E, S - split, n, H)], 1).reshape(E, S * n, H)
    torch.testing.assert_close(both, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hl, hw)
    torch.testing.assert_close(cl, cw)
    ref, (hr, cr) = autograd_sequence(feats, w_ih, b, w_hh)
    torch.testing.assert_close(cl, cr, rtol=1e-10, atol=1e-12)


def stateful_model(cube, spin_up=5, mixture="additive", model_type="ismoe", **opts):
    return make_model(cube, model_type, mixture=mixture, memory="stateful", spin_up=spin_up, **opts)


def sequence_reference(model, cube, t_from, t_to):
    """Patch reference: for every pixel, ONE pass of the model over the sequence of its k x k patches from
    SPIN_UP days before t_from to t_to - 1 (the sampler pads days before the data as missing input)."""
    cfg = model.cfg
    sampler = WindowSampler(cube, torch.device("cpu"), pad_days=cfg.context_days - (cfg.seq_len - 1))
    N = len(cube.target_rows)
    m = t_to - t_from
    with torch.no_grad():
        xb, _, db = sampler.batch(np.full(N, t_to - 1), np.arange(N), m, cfg.context_days)
        y, w, _ = model(xb, db)
    H, W = cube.x.shape[2:]
    return (y.numpy().reshape(m, H, W) * cube.y_std + cube.y_mean,
            w.numpy().reshape(m, H, W, -1).transpose(3, 0, 1, 2))


@pytest.mark.parametrize("mixture,router", [("additive", "expert_states"), ("convex", "expert_states"),
                                            ("scaled", "inputs_doy"), ("gated", "inputs_mean")])
@pytest.mark.parametrize("tile,time_chunk", [(11, 64), (4, 1), (5, 3), (3, 7)])
def test_streaming_over_time_chunks_equals_one_pass(mixture, router, tile, time_chunk):
    cube = small_cube(T=30)
    model = stateful_model(cube, spin_up=8, mixture=mixture, router_input=router)
    t_from, t_to = 12, 30
    y_ref, w_ref = sequence_reference(model, cube, t_from, t_to)
    y, w = inference.predict_cube(model, cube, t_from, t_to, tile_size=tile, time_chunk=time_chunk)
    ok = np.isfinite(y)
    assert ok.sum() >= y.size - 1           # the one gap at (5, 2, 3) is before t_from
    np.testing.assert_allclose(y[ok], y_ref[ok], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w[:, ok], w_ref[:, ok], rtol=1e-4, atol=1e-5)


def test_streaming_with_spin_up_before_the_data_equals_padded_training_sequences():
    """Output days whose spin-up reaches before the first date: prediction reads the missing days as
    missing input, the training sampler pads them the same way."""
    cube = small_cube(T=24)
    model = stateful_model(cube, spin_up=15)
    y_ref, w_ref = sequence_reference(model, cube, 6, 24)
    y, w = inference.predict_cube(model, cube, 6, 24, tile_size=6, time_chunk=5)
    ok = np.isfinite(y)
    np.testing.assert_allclose(y[ok], y_ref[ok], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w[:, ok], w_ref[:, ok], rtol=1e-4, atol=1e-5)
    assert ok.sum() >= y.size - 1


def test_stateful_memory_depends_on_days_before_the_window():
    """The point of the mode: a change of input more than SEQ_LEN days back changes a stateful model's
    output, not a windowed one's."""
    cube = small_cube(T=30)
    t = 25
    models = {"window": make_model(cube), "stateful": stateful_model(cube, spin_up=20)}
    changed = small_cube(T=30)
    changed.x[2, t - 15] += 3.0                               # 15 days back; the window is 6 days
    out = {}
    for name, model in models.items():
        a, _ = inference.predict_cube(model, cube, t, t + 1)
        b, _ = inference.predict_cube(model, changed, t, t + 1)
        out[name] = np.nanmax(np.abs(a - b))
    assert out["window"] == 0.0
    assert out["stateful"] > 1e-6            # a random model forgets fast (forget gate ~0.73), but not to 0


def test_stateful_run_windowed_reproduces_the_windowed_model():
    """SPIN_UP = SEQ_LEN - 1 and one supervised day: zero state, an L-day window, the loss on its last day,
    which is exactly the windowed model (same weights: same outputs, loss and gradients)."""
    cube = small_cube()
    L = cube.seq_len
    win = make_model(cube, mixture="additive")
    st = stateful_model(cube, spin_up=L - 1)
    st.load_state_dict(win.state_dict())
    sampler = WindowSampler(cube, torch.device("cpu"))
    t_idx, n_idx = np.arange(L - 1, 20), np.arange(L - 1, 20) % 50
    xb, yb, db = sampler.batch(t_idx, n_idx)
    for mdl in (win, st):
        mdl.train()
        torch.manual_seed(3)           # the same dropout mask
    grads = []
    for mdl in (win, st):
        torch.manual_seed(3)
        loss, _ = loss_terms(mdl, xb, yb, db, TrainConfig())
        grads.append((loss.detach(), torch.autograd.grad(loss, [p for p in mdl.parameters()])))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)
    win.eval(), st.eval()
    ya = predict_samples(win, sampler, t_idx, n_idx)[0]
    yb_ = predict_samples(st, sampler, t_idx, n_idx, run_days=1)[0]     # each day from zero state, L days back
    np.testing.assert_allclose(ya, yb_, rtol=1e-5, atol=1e-6)


def test_predict_samples_runs_cover_each_location_in_time_order():
    cube = small_cube(T=30)
    model = stateful_model(cube, spin_up=8)
    t = np.array([20, 7, 8, 29, 10, 11, 12, 29])
    n = np.array([0, 0, 0, 0, 3, 3, 3, 3])
    m, context, ends, locs, run_of, day_of = sample_runs(model, cube.n_dates, t, n, run_days=4)
    assert (m, context) == (4, 8)
    assert locs.tolist() == [0, 0, 0, 3, 3] and ends.tolist() == [10, 23, 29, 13, 29]
    np.testing.assert_array_equal(ends[run_of] - m + 1 + day_of, t)        # every sample inside its run
    # scored through runs == scored one by one (runs of 1 day with their spin-up)
    sampler = WindowSampler(cube, torch.device("cpu"), pad_days=8 - (cube.seq_len - 1))
    y_runs = predict_samples(model, sampler, t, n, run_days=4)[0]
    y_single = np.array([predict_samples(model, sampler, t[i:i + 1], n[i:i + 1], run_days=4)[0][0]
                         for i in range(len(t))])
    # a sample's output depends on where its run starts (the state's start): a sample that begins its run
    # has the same history as its own single-day run
    same = day_of == 0
    assert same.sum() == 3
    np.testing.assert_allclose(y_runs[same], y_single[same], rtol=1e-5, atol=1e-6)
    # the others equal the same run read as one sequence
    for i in np.nonzero(~same)[0]:
        e = ends[run_of[i]]
        y_seq, _ = sequence_reference(model, cube, e - m + 1, e + 1)
        r, c = divmod(int(n[i]), cube.x.shape[3])
        assert abs(y_seq[day_of[i], r, c] - y_runs[i]) < 1e-5


def test_model_file_records_memory_and_old_files_load_as_windowed(tmp_path):
    cube = small_cube()
    model = stateful_model(cube, spin_up=9)
    path = tmp_path / "m.pt"
    save_model(path, model, {})
    loaded, cfg, _ = load_model(path)
    assert cfg.memory == "stateful" and cfg.spin_up == 9 and cfg.context_days == 9
    d = model.cfg.to_dict()
    del d["memory"], d["spin_up"]
    old = ModelConfig.from_dict(d)
    assert old.memory == "window" and old.context_days == cube.seq_len - 1


def test_bad_memory_parameters():
    cube = small_cube()
    with pytest.raises(ValueError, match="SPIN_UP must be >= 0"):
        stateful_model(cube, spin_up=-1)
    with pytest.raises(ValueError, match="MEMORY must be one of window, stateful"):
        make_model(cube, memory="lstm")
    with pytest.raises(ValueError, match="SUPERVISED_DAYS must be >= 1"):
        train(cube, "/nonexistent/m.pt", cfg=TrainConfig(supervised_days=0),
              model_options={"memory": "stateful", "spin_up": 5})


def test_stateful_training_runs_and_predicts_with_warmup_record(tmp_path):
    cube = small_cube(T=40)
    path = tmp_path / "m.pt"
    res = train(cube, str(path), cfg=TrainConfig(epochs=2, batch_size=32, samples_per_epoch=256, val_samples=200,
                                                 supervised_days=8, device="cpu"),
                model_options={"memory": "stateful", "spin_up": 12, "conv_channels": 4, "hidden": 8})
    assert np.isfinite(res["val_cc"]) and res["best_epoch"] >= 1
    model, cfg, info = load_model(path)
    assert cfg.stateful and cfg.spin_up == 12 and info["train"]["supervised_days"] == 8
    out = tmp_path / "pred"
    man = inference.predict_to_folder(model, inference.cube_block_reader(cube), cube.grid, cube.dates, str(out),
                                      tile_size=5, time_chunk=7, first_output=20)
    assert man["dates"][0] == str(cube.dates[20]) and len(man["dates"]) == 20
    mem = json.loads((out / "prediction.json").read_text())["memory"]
    assert mem["mode"] == "stateful" and mem["spin_up"] == 12 and mem["warmup_days_available"] == 20
    assert mem["short_warmup_dates"] is None
    man = inference.predict_to_folder(model, inference.cube_block_reader(cube), cube.grid, cube.dates,
                                      str(tmp_path / "p2"), first_output=8)
    mem = json.loads((tmp_path / "p2" / "prediction.json").read_text())["memory"]
    assert mem["warmup_days_available"] == 8
    assert mem["short_warmup_dates"] == [str(cube.dates[8]), str(cube.dates[11])]


def test_stateful_model_file_has_its_own_format_and_windowed_files_keep_theirs(tmp_path):
    import json as _json
    from ismoe_qgis.model.io import FORMAT, FORMAT_STATEFUL, read_header
    cube = small_cube()
    for model, fmt in ((make_model(cube), FORMAT), (stateful_model(cube, spin_up=9), FORMAT_STATEFUL)):
        path = tmp_path / f"{fmt[-1]}.pt"
        save_model(path, model, {})
        header, _ = read_header(path)
        assert header["format"] == fmt
        assert header["memory"]["mode"] == model.cfg.memory
        assert header["memory"]["spin_up"] == (9 if model.cfg.stateful else None)
    # a reader of format 1 only (plugin versions before MEMORY) refuses the stateful file by its format; a file
    # that claims format 1 but holds a stateful model is refused by ours, naming the mode
    blob = torch.load(tmp_path / "2.pt", weights_only=True)
    h = _json.loads(blob["header"])
    h["format"] = FORMAT
    blob["header"] = _json.dumps(h)
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="MEMORY='stateful'"):
        read_header(tmp_path / "bad.pt")

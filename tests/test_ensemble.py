"""Ensembles (ENSEMBLE=N): members stacked on the experts' axis and trained in one pass. The members differ,
the ensemble's output is the mean of its members' outputs, member n is the single model of seed + n, tile
equals patch, the spread rasters are >= 0 and 0 where the members agree, the loss gives every member its own
gradient, importance carries the spread."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ismoe_qgis.model import inference  # noqa: E402
from ismoe_qgis.model.importance import read_importance_csv  # noqa: E402
from ismoe_qgis.model.io import load_model  # noqa: E402
from ismoe_qgis.model.networks import (build_model, copy_members, member_model, member_seeds,  # noqa: E402
                                       stack_members)
from ismoe_qgis.model.sampler import WindowSampler  # noqa: E402
from ismoe_qgis.model.train import TrainConfig, loss_terms, model_config_for, train  # noqa: E402

from test_model import small_cube  # noqa: E402

SETTINGS = [("ismoe", "additive", "expert_states"), ("ismoe", "convex", "expert_states"),
            ("ismoe", "scaled", "inputs_doy"), ("ismoe", "convex", "all_states"), ("cnn_lstm", "convex", "expert_states"),
            ("mean_expert", "convex", "expert_states")]


def ensemble(cube, members=3, seed=7, model_type="ismoe", mixture="additive", router="expert_states", **kw):
    cfg = model_config_for(cube, model_type, conv_channels=4, hidden=8, router_hidden=6, mixture=mixture,
                           router_input=router, members=members, **kw)
    model = build_model(cfg, seed)
    with torch.no_grad():                   # non-trivial intercepts and references
        if hasattr(model, "mu"):
            model.mu.copy_(0.1 * torch.arange(model.mu.numel()).view(model.mu.shape))
        if hasattr(model, "contrib_ref"):
            model.contrib_ref.copy_(0.05 * torch.randn(model.contrib_ref.shape))
    return model.eval()


def batch(cube, n=40):
    L = cube.seq_len
    sampler = WindowSampler(cube, torch.device("cpu"))
    rng = np.random.default_rng(0)
    t = rng.integers(L - 1, cube.n_dates, n)
    loc = rng.integers(0, len(cube.target_rows), n)
    return sampler.batch(t, loc)


@pytest.mark.parametrize("model_type,mixture,router", SETTINGS)
def test_ensemble_output_is_the_mean_of_its_members(model_type, mixture, router):
    cube = small_cube()
    ens = ensemble(cube, 3, model_type=model_type, mixture=mixture, router=router)
    xb, _, db = batch(cube)
    with torch.no_grad():
        y, w, c = ens(xb, db)
        ym, wm, cm = ens.forward_members(xb, db)
        singles = [member_model(ens, n).eval()(xb, db) for n in range(3)]
    E = 1 if model_type == "cnn_lstm" else 3
    assert ym.shape == (40, 3) and wm.shape == (40, 3, E)
    for n in range(3):
        torch.testing.assert_close(ym[:, n], singles[n][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(wm[:, n], singles[n][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, torch.stack([s[0] for s in singles], 1).mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, torch.stack([s[1] for s in singles], 1).mean(1), rtol=1e-5, atol=1e-6)
    # the members differ
    assert (ym[:, 0] - ym[:, 1]).abs().max() > 1e-3


def test_member_n_starts_as_the_single_model_of_its_seed_and_stacking_round_trips():
    cube = small_cube()
    cfg = model_config_for(cube, "ismoe", conv_channels=4, hidden=8, mixture="convex", members=3)
    ens = build_model(cfg, 11)
    seeds = member_seeds(11, 3)
    assert ens.cfg.member_seeds == seeds and len(set(seeds)) == 3
    # ensembles of neighbouring seeds share no member (seed + n would: 11 -> 11, 12, 13; 12 -> 12, 13, 14)
    assert not set(seeds) & set(member_seeds(12, 3)) and member_seeds(11, 1) == [11]
    single = build_model(model_config_for(cube, "ismoe", conv_channels=4, hidden=8, mixture="convex"), seeds[1])
    m1 = member_model(ens, 1)
    for (k, a), (_, b) in zip(m1.state_dict().items(), single.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    back = stack_members([member_model(ens, n) for n in range(3)])
    for k, v in ens.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, msg=k)
    assert back.cfg.member_seeds == seeds
    # copy_members replaces exactly the chosen members' weights
    other = build_model(cfg, 99)
    dst = {k: v.clone() for k, v in ens.state_dict().items()}
    copy_members(dst, other.state_dict(), [1], 3, 3)
    mixed = build_model(cfg, 0)
    mixed.load_state_dict(dst)
    for n, src in ((0, ens), (1, other), (2, ens)):
        for (k, a), (_, b) in zip(member_model(mixed, n).state_dict().items(), member_model(src, n).state_dict().items()):
            torch.testing.assert_close(a, b, msg=f"member {n} {k}")


@pytest.mark.parametrize("model_type,mixture,router", [SETTINGS[0], SETTINGS[2], SETTINGS[4]])
def test_ensemble_tile_equals_patch(model_type, mixture, router):
    cube = small_cube()
    ens = ensemble(cube, 2, model_type=model_type, mixture=mixture, router=router)
    L, r = cube.seq_len, cube.patch_size // 2
    H, W = cube.x.shape[2:]
    T, N = cube.n_dates, len(cube.target_rows)
    sampler = WindowSampler(cube, torch.device("cpu"))
    t_idx, n_idx = np.repeat(np.arange(L - 1, T), N), np.tile(np.arange(N), T - L + 1)
    with torch.no_grad():
        xb, _, db = sampler.batch(t_idx, n_idx)
        y_ref, w_ref, _ = ens.forward_members(xb, db)
    raw = inference.cube_block_reader(cube)(-r, -r, H + 2 * r, W + 2 * r, 0, T)
    xt = inference.normalise_block(ens, raw)
    doy = torch.from_numpy(inference.day_of_year(cube.dates[L - 1:]))
    sm, wts = inference.predict_tile(ens, xt, doy, chunk_windows=97, members=True)
    np.testing.assert_allclose(sm.numpy(), y_ref.numpy().reshape(T - L + 1, H, W, 2).transpose(3, 0, 1, 2),
                               rtol=1e-4, atol=1e-5)
    E = wts.shape[1]
    np.testing.assert_allclose(wts.numpy(), w_ref.numpy().reshape(T - L + 1, H, W, 2, E).transpose(3, 4, 0, 1, 2),
                               rtol=1e-4, atol=1e-5)
    mean_sm, _ = inference.predict_tile(ens, xt, doy)
    np.testing.assert_allclose(mean_sm.numpy(), sm.numpy().mean(0), rtol=1e-5, atol=1e-6)


def test_spread_rasters_and_importance(tmp_path):
    import rasterio
    cube = small_cube()
    ens = ensemble(cube, 3)
    out = tmp_path / "pred"
    man = inference.predict_to_folder(ens, inference.cube_block_reader(cube), cube.grid, cube.dates, str(out),
                                      tile_size=5, time_chunk=7)
    assert man["ensemble"]["members"] == 3 and man["ensemble"]["seeds"] == member_seeds(7, 3)
    sm_cube, w_cube = inference.predict_cube(ens, cube)
    with rasterio.open(out / "sm.tif") as ds:
        sm = ds.read()
    with rasterio.open(out / "sm_spread.tif") as ds:
        sd = ds.read()
        assert ds.count == len(man["dates"])
    ok = sm != inference.NODATA
    assert (sd[ok] >= 0).all() and (sd[~ok] == inference.NODATA).all() and sd[ok].max() > 1e-4
    L = cube.seq_len
    np.testing.assert_allclose(sm[ok], sm_cube[ok], rtol=1e-4, atol=1e-5)
    # the spread is the members' standard deviation
    r = cube.patch_size // 2
    H, W = cube.x.shape[2:]
    raw = inference.cube_block_reader(cube)(-r, -r, H + 2 * r, W + 2 * r, 0, cube.n_dates)
    sm_m, w_m = inference.predict_tile(ens, inference.normalise_block(ens, raw),
                                       torch.from_numpy(inference.day_of_year(cube.dates[L - 1:])), members=True)
    sd_ref = (sm_m.numpy() * cube.y_std).std(0)
    np.testing.assert_allclose(sd[ok], sd_ref[ok], rtol=1e-3, atol=1e-6)
    for e, f in enumerate(man["factors"]):
        with rasterio.open(out / man["ensemble"]["weight_spread"][f]) as ds:
            wsd = ds.read()
        np.testing.assert_allclose(wsd[ok], w_m.numpy()[:, e].std(0)[ok], rtol=1e-3, atol=1e-6)
    # importance.csv: the spread of a period's mean weight is the std of the members' period means
    table = read_importance_csv(out / "importance.csv")
    s = table.get(None, "month")
    assert s.spread is not None and np.nanmax(s.spread) > 0
    month = cube.dates[L - 1:].astype("datetime64[M]").astype(int) % 12 + 1
    valid = ok
    first = s.periods[0]
    sel = month == first
    member_means = [np.nanmean(np.where(valid[sel], w_m.numpy()[n, 0][sel], np.nan)) for n in range(3)]
    assert abs(s.spread[0, 0] - np.std(member_means)) < 1e-5
    assert abs(s.mean[0, 0] - np.mean(member_means)) < 1e-5


def test_identical_members_have_zero_spread(tmp_path):
    import rasterio
    cube = small_cube()
    one = ensemble(cube, 1)
    twins = stack_members([one, one])
    out = tmp_path / "twins"
    man = inference.predict_to_folder(twins, inference.cube_block_reader(cube), cube.grid, cube.dates, str(out))
    with rasterio.open(out / "sm_spread.tif") as ds:
        sd = ds.read()
    with rasterio.open(out / "sm.tif") as ds:
        ok = ds.read() != inference.NODATA
    assert np.abs(sd[ok]).max() < 1e-6
    assert man["ensemble"]["members"] == 2


def test_ensemble_loss_gives_each_member_its_own_gradient():
    cube = small_cube()
    cfg = model_config_for(cube, "ismoe", conv_channels=4, hidden=8, mixture="convex", members=2, dropout=0.0)
    ens = build_model(cfg, 3).train()
    xb, yb, db = batch(cube)
    loss, _ = loss_terms(ens, xb, yb, db, TrainConfig())
    grads = dict(zip([k for k, _ in ens.named_parameters()], torch.autograd.grad(loss, list(ens.parameters()))))
    for n in range(2):
        single = member_model(ens, n).train()
        ls, _ = loss_terms(single, xb, yb, db, TrainConfig())
        gs = dict(zip([k for k, _ in single.named_parameters()], torch.autograd.grad(ls, list(single.parameters()))))
        E = 3
        torch.testing.assert_close(grads["experts.w_hh"][n * E:(n + 1) * E] * 2, gs["experts.w_hh"], rtol=1e-4,
                                   atol=1e-7)
        torch.testing.assert_close(grads["router.w1"][n * E:(n + 1) * E] * 2, gs["router.w1"], rtol=1e-4, atol=1e-7)


def test_ensemble_trains_and_saves_all_members(tmp_path):
    cube = small_cube(T=40)
    path = tmp_path / "ens.pt"
    res = train(cube, str(path), cfg=TrainConfig(epochs=2, batch_size=32, samples_per_epoch=256, val_samples=200,
                                                 device="cpu", seed=5),
                model_options={"members": 2, "conv_channels": 4, "hidden": 8})
    model, cfg, info = load_model(path)
    assert cfg.members == 2 and cfg.member_seeds == member_seeds(5, 2) and model.members == 2
    assert np.isfinite(res["val_cc"])
    # early stopping and the best checkpoint per member
    assert len(info["member_best_epochs"]) == 2 and all(1 <= e <= 2 for e in info["member_best_epochs"])
    assert len(info["history"][0]["member_val_loss"]) == 2
    assert model.contrib_ref.shape == (2, 3) and model.mu.shape == (2,)
    a, b = member_model(model, 0), member_model(model, 1)
    assert not torch.equal(a.experts.w_hh, b.experts.w_hh)


def test_residual_sd_splits_the_error_variance():
    """The residual sd is what the members' disagreement leaves of the error variance: members that spread as
    much as the error leave none; identical members leave all of it; and +-2 predictive sd then covers about
    95% of Gaussian errors."""
    from ismoe_qgis.model.train import ensemble_residual_sd
    rng = np.random.default_rng(1)
    obs = rng.normal(0.3, 0.05, 20000)
    truth_err = rng.normal(0, 0.02, obs.size)                     # the mean's error: sd 0.02
    same = np.repeat((obs + truth_err)[:, None], 3, axis=1)       # identical members: no spread at all
    r = ensemble_residual_sd(obs, same)
    assert r["mean_member_sd"] < 1e-12 and r["inside_2sd_members"] < 0.01
    assert r["residual_sd"] == pytest.approx(0.02, rel=0.02)
    assert r["inside_2sd_total"] == pytest.approx(0.954, abs=0.01)
    # members spread around the mean by more than the error: nothing left over
    wide = (obs + truth_err)[:, None] + np.array([-0.05, 0.0, 0.05])
    assert ensemble_residual_sd(obs, wide)["residual_sd"] == 0.0
    # NaN samples are left out
    same[:10, 1] = np.nan
    assert ensemble_residual_sd(obs, same)["n"] == obs.size - 10


def test_bootstrap_weights_give_each_member_its_weighted_loss():
    cube = small_cube()
    cfg = model_config_for(cube, "ismoe", conv_channels=4, hidden=8, mixture="additive", members=2, dropout=0.0)
    ens = build_model(cfg, 3).train()
    xb, yb, db = batch(cube)
    w = torch.from_numpy(np.random.default_rng(0).poisson(1.0, (len(yb), 2)).astype(np.float32))
    loss, _ = loss_terms(ens, xb, yb, db, TrainConfig(), None, w)
    with torch.no_grad():
        pred, _, _ = ens.forward_members(xb, db)
    want = sum(float((w[:, k] * (pred[:, k] - yb) ** 2).sum() / w[:, k].sum()) for k in range(2)) / 2
    assert abs(float(loss.detach()) - want) < 1e-5


def test_bad_ensemble_size():
    cube = small_cube()
    with pytest.raises(ValueError, match="ENSEMBLE must be a number of members >= 1"):
        model_config_for(cube, "ismoe", members=0)

"""The MIXTURE forms (networks.SoilMoistureNet.mix): what each computes, what its weights mean,
tile == patch for every form, the additive form's contribution reference, old model files."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ismoe_qgis.model import inference  # noqa: E402
from ismoe_qgis.model.io import load_model, save_model  # noqa: E402
from ismoe_qgis.model.networks import MIXTURES, ModelConfig, SoilMoistureNet, silent_factor_mask  # noqa: E402
from ismoe_qgis.model.networks import window_rows  # noqa: E402
from ismoe_qgis.model.sample_inference import set_contribution_reference  # noqa: E402
from ismoe_qgis.model.sampler import WindowSampler  # noqa: E402
from ismoe_qgis.model.train import TrainConfig, train  # noqa: E402

from test_model import FACTORS, make_model, patch_predictions, small_cube  # noqa: E402


def _windows(cube):
    sampler = WindowSampler(cube, torch.device("cpu"))
    L, T, N = cube.seq_len, cube.n_dates, len(cube.target_rows)
    t_idx = np.repeat(np.arange(L - 1, T), N)
    n_idx = np.tile(np.arange(N), T - L + 1)
    xb, _, db = sampler.batch(t_idx, n_idx)
    return sampler, t_idx, n_idx, xb, db


@pytest.mark.parametrize("mixture", MIXTURES)
def test_mixture_forms_compute_what_they_say(mixture):
    cube = small_cube()
    model = make_model(cube, mixture=mixture)
    with torch.no_grad():
        model.mu.fill_(0.3) if mixture != "convex" else None
        _, _, _, xb, db = _windows(cube)
        y, w, c = model(xb, db)
        raw, states = model.experts(xb, cube.seq_len)
    silent = silent_factor_mask(xb, model.factor_index, cube.seq_len)
    assert silent[:, 0].any() and not silent[:, 0].all()          # snow is silent in the top rows only
    E = len(FACTORS)
    np.testing.assert_allclose(w.sum(1).numpy(), 1.0, rtol=1e-5)
    assert (w >= 0).all()
    assert torch.all(w[silent] == 0)                                # a factor without signal: weight 0
    if mixture == "convex":
        assert model.router is not None
        np.testing.assert_allclose(c.numpy(), raw.numpy())          # experts are full SM estimates
        np.testing.assert_allclose(y.numpy(), (w * raw).sum(1).numpy(), rtol=1e-5, atol=1e-6)
    elif mixture == "scaled":
        assert torch.all(c[silent] == 0)
        np.testing.assert_allclose(y.numpy(), (0.3 + E * (w * c).sum(1)).numpy(), rtol=1e-5, atol=1e-6)
    elif mixture == "gated":
        with torch.no_grad():
            model.contrib_ref.copy_(torch.tensor([0.2, -0.1, 0.05]))
            y, w, c = model(xb, db)
            assert model.cfg.router_input == "inputs_mean"          # ROUTER_INPUT auto, for gated
            k = cube.patch_size
            centre = window_rows(xb[:, :, :, k // 2, k // 2], cube.seq_len)
            logits = model.router(states, centre, db)[:, 0].masked_fill(silent, float("-inf"))
        gates = E * torch.softmax(logits, dim=1)
        assert torch.all(c[silent] == 0)                             # silent factors contribute nothing
        np.testing.assert_allclose(c.numpy(), (gates * raw).masked_fill(silent, 0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(y.numpy(), (0.3 + c.sum(1)).numpy(), rtol=1e-5, atol=1e-6)
        d2 = (c - model.contrib_ref) ** 2 * (~silent)
        np.testing.assert_allclose(w.numpy(), (d2 / d2.sum(1, keepdim=True)).numpy(), rtol=1e-5, atol=1e-7)
    else:
        assert model.router is None                                  # no router: the weights are measured
        assert torch.all(c[silent] == 0)                             # silent factors contribute nothing
        np.testing.assert_allclose(c[~silent].numpy(), raw[~silent].numpy())
        np.testing.assert_allclose(y.numpy(), (0.3 + c.sum(1)).numpy(), rtol=1e-5, atol=1e-6)
        d2 = (c - model.contrib_ref) ** 2 * (~silent)
        np.testing.assert_allclose(w.numpy(), (d2 / d2.sum(1, keepdim=True)).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mixture", ["scaled", "additive", "gated"])
def test_tile_equals_patch_for_every_mixture(tmp_path, mixture):
    import rasterio
    cube = small_cube()
    model = make_model(cube, mixture=mixture)
    if mixture in ("additive", "gated"):
        with torch.no_grad():
            model.contrib_ref.copy_(torch.tensor([0.2, -0.1, 0.05]))
    y_ref, w_ref = patch_predictions(model, cube)
    out = tmp_path / "pred"
    man = inference.predict_to_folder(model, inference.cube_block_reader(cube), cube.grid, cube.dates, str(out),
                                      tile_size=4, time_chunk=5)
    with rasterio.open(out / "sm.tif") as ds:
        sm = ds.read()
    mask = sm != inference.NODATA
    np.testing.assert_allclose(sm[mask], (y_ref * cube.y_std + cube.y_mean)[mask], rtol=1e-4, atol=1e-5)
    for e, f in enumerate(FACTORS):
        with rasterio.open(out / f"weight_{f}.tif") as ds:
            np.testing.assert_allclose(ds.read()[mask], w_ref[e][mask], rtol=1e-4, atol=1e-5)
    meta = json.loads((out / "prediction.json").read_text())
    assert meta["mixture"] == mixture == man["mixture"]
    assert meta["weights_meaning"] == model.weight_meaning


def test_contribution_reference_is_the_mean_where_the_factor_has_signal():
    cube = small_cube()
    model = make_model(cube, mixture="additive")
    sampler, t_idx, n_idx, xb, db = _windows(cube)
    with torch.no_grad():
        y0, _, c = model(xb, db)
    ref = set_contribution_reference(model, sampler, t_idx, n_idx, np.random.default_rng(0), n=10 ** 6)
    silent = silent_factor_mask(xb, model.factor_index, cube.seq_len)
    for e in range(len(FACTORS)):
        assert ref[e] == pytest.approx(float(c[~silent[:, e], e].mean()), rel=1e-4, abs=1e-6)
    with torch.no_grad():
        y1, w1, _ = model(xb, db)
    np.testing.assert_array_equal(y0.numpy(), y1.numpy())          # the estimate does not move
    # departures from the reference: each factor's centred contribution has mean 0 where it has signal
    d = (c - model.contrib_ref).masked_fill(silent, 0.0)
    np.testing.assert_allclose(d.sum(0).numpy() / (~silent).sum(0).numpy(), 0.0, atol=1e-5)


def test_additive_training_sets_reference_and_records_mixture(tmp_path):
    cube = small_cube(T=40)
    path = tmp_path / "m.pt"
    logs = []
    from ismoe_qgis.core_callbacks import Callbacks
    res = train(cube, str(path), "ismoe", TrainConfig(epochs=2, samples_per_epoch=64, val_samples=64, batch_size=32,
                                                      val_start="2021-01-10", test_start="2021-01-20"),
                {"mixture": "additive", "conv_channels": 4, "hidden": 8}, Callbacks(log=logs.append))
    model, cfg, _ = load_model(str(path))
    assert cfg.mixture == "additive" and model.mixture == "additive" and model.router is None
    assert torch.any(model.contrib_ref != 0)
    assert any("EXPERT_LOSS applies to the convex mixture only" in m for m in logs)
    assert any("mean contribution per factor" in m for m in logs)
    assert np.isfinite(res["val_cc"])


def test_old_model_file_without_mixture_loads_convex(tmp_path):
    cube = small_cube()
    model = make_model(cube, mixture="convex")
    path = tmp_path / "old.pt"
    save_model(str(path), model)
    blob = torch.load(str(path), weights_only=True)
    header = json.loads(blob["header"])
    del header["config"]["mixture"]                                  # as written before MIXTURE existed
    blob["header"] = json.dumps(header)
    torch.save(blob, str(path))
    loaded, cfg, _ = load_model(str(path))
    assert cfg.mixture == "convex" and loaded.router is not None
    y_ref, _ = patch_predictions(model, cube)
    y, _ = patch_predictions(loaded, cube)
    np.testing.assert_array_equal(y, y_ref)


def test_bad_mixture_and_schedule_are_named():
    with pytest.raises(ValueError, match="MIXTURE must be one of convex, scaled, additive, gated, got 'sum'"):
        ModelConfig(factors=FACTORS, variables=["sd", "sc", "ssr", "str", "u10"], mixture="sum")
    cube = small_cube()
    with pytest.raises(ValueError, match="LR_SCHEDULE must be one of onecycle, constant"):
        train(cube, "/nonexistent/m.pt", "ismoe", TrainConfig(schedule="cosine"))


def test_baselines_ignore_mixture():
    cube = small_cube()
    for mt in ("cnn_lstm", "mean_expert"):
        m = SoilMoistureNet(ModelConfig(factors=FACTORS, variables=cube.variables, model_type=mt, mixture="additive",
                                        patch_size=cube.patch_size, seq_len=cube.seq_len))
        assert m.mixture == "convex" and not hasattr(m, "mu")


def test_gated_training_with_its_priors_sets_reference_and_notes_the_router(tmp_path):
    """A gated run with the gate-smoothness and sparsity terms on (runs of 2 consecutive days) trains, records
    them, sets the gated contributions' reference, and says that expert_states gates see their own factor only."""
    from ismoe_qgis.core_callbacks import Callbacks
    cube = small_cube(T=40)
    path = tmp_path / "g.pt"
    logs = []
    res = train(cube, str(path), "ismoe", TrainConfig(epochs=2, samples_per_epoch=64, val_samples=64, batch_size=32,
                                                      consecutive_days=2, gate_smoothness=1.0, contribution_l1=0.01,
                                                      val_start="2021-01-10", test_start="2021-01-20"),
                {"mixture": "gated", "router_input": "expert_states", "conv_channels": 4, "hidden": 8},
                Callbacks(log=logs.append))
    model, cfg, info = load_model(str(path))
    assert cfg.mixture == "gated" and model.router is not None and torch.any(model.contrib_ref != 0)
    assert info["train"]["gate_smoothness"] == 1.0 and info["train"]["contribution_l1"] == 0.01
    assert any("the gated mixture with ROUTER_INPUT expert_states" in m for m in logs)
    assert np.isfinite(res["val_cc"])


def test_the_default_is_gated_with_the_router_on_the_inputs_means_and_old_files_keep_theirs():
    cube = small_cube()
    cfg = ModelConfig(factors=FACTORS, variables=cube.variables, patch_size=cube.patch_size, seq_len=cube.seq_len)
    assert cfg.mixture == "gated" and cfg.router_input == "inputs_mean"          # "auto", resolved and recorded
    for mixture in ("convex", "scaled"):
        c = ModelConfig(factors=FACTORS, variables=cube.variables, mixture=mixture, router_input="auto")
        assert c.router_input == "expert_states"
    c = ModelConfig(factors=FACTORS, variables=cube.variables, mixture="gated", router_input="all_states")
    assert c.router_input == "all_states"                                      # a choice is kept
    old = ModelConfig.from_dict({"factors": FACTORS, "variables": cube.variables})   # a file from before both
    assert old.mixture == "convex" and old.router_input == "expert_states"
    assert ModelConfig.from_dict(cfg.to_dict()).router_input == "inputs_mean"


@pytest.mark.parametrize("mixture", ["additive", "gated"])
def test_predict_cube_contributions_add_up_to_the_estimate(mixture):
    """contributions=True (the benchmarks' variance shares) returns what each factor adds: mu plus their sum is
    the estimate, in normalised units."""
    cube = small_cube()
    model = make_model(cube, mixture=mixture)
    sm, w = inference.predict_cube(model, cube, tile_size=4, time_chunk=5)
    _, c = inference.predict_cube(model, cube, tile_size=4, time_chunk=5, contributions=True)
    ok = np.isfinite(sm)
    est = (float(model.mu.detach()) + c.sum(0)) * cube.y_std + cube.y_mean
    np.testing.assert_allclose(est[ok], sm[ok], rtol=1e-4, atol=1e-5)
    assert not np.allclose(c[:, ok], w[:, ok])                     # not the weights

"""Held-out locations (SPLIT=locations|blocks): fold assignment, the buffer, training without the held-out
locations, out-of-fold scoring, bad input."""
import numpy as np
import pytest

from ismoe_qgis.model.folds import FoldError, assign_folds, training_exclusion


def grid_locations(H=30, W=40):
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    return r.ravel(), c.ravel()


def test_location_folds_partition_the_locations():
    rows, cols = np.arange(23), np.zeros(23, int)
    f = assign_folds(rows, cols, "locations", 5, seed=3)
    assert f.shape == (23,) and set(f.tolist()) == set(range(5))
    counts = np.bincount(f)
    assert counts.max() - counts.min() <= 1           # as even as possible; each location in exactly one fold
    assert not np.array_equal(f, assign_folds(rows, cols, "locations", 5, seed=4))
    np.testing.assert_array_equal(f, assign_folds(rows, cols, "locations", 5, seed=3))


def test_block_folds_keep_blocks_whole_and_the_buffer_holds():
    rows, cols = grid_locations()
    f = assign_folds(rows, cols, "blocks", 4, seed=0, block_size=8)
    blocks = (rows // 8) * 100 + cols // 8
    for b in np.unique(blocks):
        assert len(set(f[blocks == b].tolist())) == 1        # a block is in one fold
    excl = training_exclusion(rows, cols, f, 4, buffer=5)
    for k in range(4):
        held = f == k
        train = ~excl[k]
        assert not (train & held).any()
        # every training location is more than 5 px (Chebyshev) from every held-out one
        d = np.maximum(np.abs(rows[train][:, None] - rows[held][None]), np.abs(cols[train][:, None] - cols[held][None]))
        assert d.min() > 5
        # and the buffer excludes no more than it must: a location 6 px away from fold k may train
        assert train.any()


def test_fold_labels_from_a_field():
    rows, cols = np.arange(6), np.zeros(6, int)
    f = assign_folds(rows, cols, "locations", 3, fold_labels=["b", "a", "c", "a", "b", "c"])
    assert f.tolist() == [1, 0, 2, 0, 1, 2]
    with pytest.raises(FoldError, match="2 distinct value.*FOLDS is 3"):
        assign_folds(rows, cols, "locations", 3, fold_labels=["a", "b"] * 3)
    with pytest.raises(FoldError, match="no value for 1 location.*s3"):
        assign_folds(rows, cols, "locations", 3, fold_labels=["a", "b", "c", None, "a", "b"],
                     labels=["s0", "s1", "s2", "s3", "s4", "s5"])


@pytest.mark.parametrize("kw,words", [
    (dict(split="locations", folds=3, rows=[0], cols=[0]), "at least 2 locations"),
    (dict(split="locations", folds=7, rows=list(range(5)), cols=[0] * 5), "FOLDS=7 is more than the 5 locations"),
    (dict(split="blocks", folds=9, rows=list(range(16)), cols=[0] * 16, block_size=8), "more than the 2 blocks"),
    (dict(split="locations", folds=1, rows=[0, 1], cols=[0, 0]), "FOLDS must be a whole number >= 2"),
])
def test_bad_fold_settings(kw, words):
    with pytest.raises(FoldError, match=words):
        assign_folds(kw.pop("rows"), kw.pop("cols"), **kw)


def test_buffer_that_leaves_a_fold_nothing_is_refused():
    rows, cols = np.arange(4), np.zeros(4, int)
    with pytest.raises(FoldError, match="no training location left"):
        training_exclusion(rows, cols, np.array([0, 1, 0, 1]), 2, buffer=3)


def test_cross_validation_trains_without_held_out_locations_and_scores_out_of_fold(tmp_path):
    torch = pytest.importorskip("torch")
    from ismoe_qgis.model.io import load_model
    from ismoe_qgis.model.networks import member_model
    from ismoe_qgis.model.sample_inference import predict_samples
    from ismoe_qgis.model.sampler import WindowSampler
    from ismoe_qgis.model.train import TrainConfig, train
    from test_model import small_cube
    cube = small_cube(T=40)
    path = tmp_path / "cv.pt"
    res = train(cube, str(path), cfg=TrainConfig(epochs=2, batch_size=32, samples_per_epoch=256, val_samples=300,
                                                 device="cpu", split="blocks", folds=3, block_size=4, buffer=1),
                model_options={"conv_channels": 4, "hidden": 8})
    model, cfg, info = load_model(path)
    assert cfg.member_kind == "folds" and cfg.members == 3
    cv = info["cv"]
    assert cv["split"] == "blocks" and cv["folds"] == 3 and len(cv["fold_of"]) == len(cube.target_rows)
    assert np.isfinite(res["test_cc"])
    # the held-out locations never reach fold k's loss: its gradient from a batch of held-out windows is 0
    from ismoe_qgis.model.train import loss_terms
    fold_of = np.array(cv["fold_of"])
    sampler = WindowSampler(cube, torch.device("cpu"))
    held = np.nonzero(fold_of == 0)[0][:20]
    t = np.full(len(held), 20)
    xb, yb, db = sampler.batch(t, held)
    excluded = training_exclusion(cube.target_rows, cube.target_cols, fold_of, 3, 1)
    mm = torch.from_numpy(~excluded[:, held].T)
    model.train()
    loss, _ = loss_terms(model, xb, yb, db, TrainConfig(), None, mm)
    g = torch.autograd.grad(loss, model.experts.w_hh)[0]
    E = 3
    assert float(g[:E].abs().max()) == 0.0 and float(g[E:].abs().max()) > 0
    # out of fold: evaluate's estimate at a location is its fold's model's
    model.eval()
    ym, _, _ = predict_samples(model, sampler, t, held, members=True)
    single = member_model(model, 0).eval()
    y0, _, _ = predict_samples(single, sampler, t, held)
    np.testing.assert_allclose(ym[:, 0], y0, rtol=1e-5, atol=1e-6)


def test_split_locations_with_an_ensemble_is_refused():
    from ismoe_qgis.model.train import TrainConfig, train
    from test_model import small_cube
    with pytest.raises(ValueError, match="use ENSEMBLE=1 with it"):
        train(small_cube(), "/nonexistent/m.pt", cfg=TrainConfig(split="locations", folds=2),
              model_options={"members": 2})

"""Issue 15 items 1-2: the dataset cube as chunked Zarr (read lazily) and training windows drawn chunk-wise."""
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("zarr")
torch = pytest.importorskip("torch")

from ismoe_qgis.core_callbacks import Callbacks, Cancelled  # noqa: E402
from ismoe_qgis.data.chunked import ChunkedWindowSampler, choose_mode, make_sampler  # noqa: E402
from ismoe_qgis.data.cube import Cube, DatasetFileError  # noqa: E402
from ismoe_qgis.data.zarrcube import LazyCubeArray, ZARR_FORMAT  # noqa: E402
from ismoe_qgis.model.sampler import WindowSampler  # noqa: E402
from ismoe_qgis.model.train import TrainConfig, train  # noqa: E402

FACTORS = {"snow": ["sd", "sc"], "radiation": ["ssr", "str"], "wind": ["u10"]}
VARS = ["sd", "sc", "ssr", "str", "u10"]
WKT = ('PROJCS["WGS 84 / UTM zone 45N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
       'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
       'PARAMETER["central_meridian",87],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],'
       'UNIT["metre",1]]')


def station_cube(T=70, H=13, W=17, k=5, L=6, seed=0):
    """A cube with gaps, station targets at scattered pixels (some at the edges) and a projected CRS."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(VARS), T, H, W)).astype(np.float32) * np.array([1, 2, 30, 40, 5], np.float32)[:, None,
                                                                                                           None, None]
    x[1, 10:14, 2:6, 3:9] = np.nan
    x[4, 40, :, :] = np.nan
    rows = np.array([0, 3, 6, 12, 7, 12, 1], np.int32)
    cols = np.array([0, 4, 8, 16, 15, 2, 11], np.int32)
    y = (0.2 + 0.05 * x[0, :, rows, cols].T + 0.01 * rng.normal(size=(T, len(rows)))).astype(np.float32)
    y[rng.random(y.shape) < 0.2] = np.nan
    dates = np.datetime64("2019-12-20") + np.arange(T)
    grid = {"crs_wkt": WKT, "transform": [500000.0, 1000.0, 0.0, 3400000.0, 0.0, -1000.0], "width": W, "height": H}
    return Cube(x=x, y=y, target_rows=rows, target_cols=cols, dates=dates, factors=FACTORS, variables=VARS,
                grid=grid, patch_size=k, seq_len=L, target_kind="stations",
                station_ids=[f"st{i}" for i in range(len(rows))])


def small_chunks(cube):
    return (len(cube.variables), 8, 4, 4)        # many chunks: windows cross chunk and block borders


def test_zarr_cube_round_trips_exactly_like_npz(tmp_path):
    cube = station_cube()
    cube.save(tmp_path / "c.npz")
    cube.save(tmp_path / "c.zarr", chunks=small_chunks(cube))
    a, z = Cube.load(tmp_path / "c.npz"), Cube.load(tmp_path / "c.zarr")
    assert not a.lazy and z.lazy and isinstance(z.x, LazyCubeArray)
    assert z.x.shape == a.x.shape and z.x.chunks == small_chunks(cube)
    np.testing.assert_array_equal(np.asarray(z.x), a.x)           # NaN at the same places, values bit-equal
    np.testing.assert_array_equal(z.y, a.y)
    np.testing.assert_array_equal(z.dates, a.dates)
    np.testing.assert_array_equal(z.target_rows, a.target_rows)
    np.testing.assert_array_equal(z.target_cols, a.target_cols)
    assert z.grid == a.grid and z.grid["crs_wkt"] == WKT
    assert (z.x_mean, z.x_std, z.y_mean, z.y_std) == (a.x_mean, a.x_std, a.y_mean, a.y_std)
    assert (z.factors, z.variables, z.station_ids, z.patch_size, z.seq_len, z.target_kind) == \
        (a.factors, a.variables, a.station_ids, a.patch_size, a.seq_len, a.target_kind)
    # what the rest of the plugin asks of cube.x, read chunk by chunk
    np.testing.assert_array_equal(z.centre_valid(), a.centre_valid())
    np.testing.assert_array_equal(z.x[:, :, a.target_rows, a.target_cols], a.x[:, :, a.target_rows, a.target_cols])
    tm = np.arange(cube.n_dates) % 3 == 0
    np.testing.assert_array_equal(z.x[:, tm, 7, 15], a.x[:, tm, 7, 15])
    np.testing.assert_array_equal(z.x[:, 3:29, 2:11, 5:17], a.x[:, 3:29, 2:11, 5:17])
    np.testing.assert_array_equal(np.asarray(z.x[[4, 0, 2]]), a.x[[4, 0, 2]])
    np.testing.assert_array_equal(z.normalised_x(), a.normalised_x())
    assert z.why_no_samples(2, np.ones(cube.n_dates, bool)) == a.why_no_samples(2, np.ones(cube.n_dates, bool))


def test_xarray_opens_the_zarr_cube_with_named_dims(tmp_path):
    xr = pytest.importorskip("xarray")
    cube = station_cube()
    cube.save(tmp_path / "c.zarr", chunks=small_chunks(cube))
    ds = xr.open_zarr(str(tmp_path / "c.zarr"))
    assert ds["data"].dims == ("variable", "time", "y", "x")
    assert ds["target"].dims == ("time", "location")
    assert list(ds["variable"].values) == VARS
    np.testing.assert_array_equal(ds["time"].values.astype("datetime64[D]"), cube.dates)
    assert ds.attrs["ismoe_format"] == ZARR_FORMAT and ds.attrs["crs_wkt"] == WKT
    assert ds.attrs["transform"] == cube.grid["transform"]
    assert ds["x"].values[0] == 500500.0 and ds["y"].values[0] == 3399500.0       # pixel centres
    np.testing.assert_array_equal(ds["data"].isel(variable=2, time=5).values, cube.x[2, 5])


def test_prepare_writes_zarr_block_by_block_equal_to_npz(demo_region, tmp_path):
    from ismoe_qgis.data.prepare import prepare_dataset
    man = demo_region.manifest
    factors = {f: [(v, str(demo_region.path / man["layers"][v])) for v in vs] for f, vs in man["factors"].items()}
    target = str(demo_region.path / man["target"])
    mem = prepare_dataset(factors, target, patch_size=5, seq_len=7)
    logs = []
    out = tmp_path / "d.zarr"
    # blocks of one chunk: 24 x 24 px in 10 x 16 px tiles and 100-day chunks -> many blocks per variable
    z = prepare_dataset(factors, target, patch_size=5, seq_len=7, out_path=str(out), chunks=(1, 100, 10, 16),
                        block_bytes=1, callbacks=Callbacks(log=logs.append))
    assert z.lazy and z.x.chunks == (len(mem.variables), 100, 10, 16)
    assert any("block(s)" in m for m in logs)
    np.testing.assert_array_equal(np.asarray(z.x), mem.x)
    np.testing.assert_array_equal(z.y, mem.y)
    np.testing.assert_array_equal(z.target_rows, mem.target_rows)
    np.testing.assert_array_equal(z.dates, mem.dates)
    np.testing.assert_array_equal(z.centre_valid(), mem.centre_valid())
    assert z.grid == mem.grid and z.factors == mem.factors
    # statistics accumulated per block in float64: equal to the two-pass in-memory ones to rounding
    np.testing.assert_allclose(z.x_mean, mem.x_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z.x_std, mem.x_std, rtol=1e-12)
    np.testing.assert_allclose([z.y_mean, z.y_std], [mem.y_mean, mem.y_std], rtol=1e-12)
    assert sorted(os.listdir(tmp_path)) == ["d.zarr"]          # no temporary folder left
    # a cancelled prepare leaves nothing: neither the cube nor its temporary folder
    calls = {"n": 0}

    def cancel_later():
        calls["n"] += 1
        return calls["n"] > 5
    with pytest.raises(Cancelled):
        prepare_dataset(factors, target, patch_size=5, seq_len=7, out_path=str(tmp_path / "e.zarr"),
                        chunks=(1, 100, 10, 16), block_bytes=1, callbacks=Callbacks(is_cancelled=cancel_later))
    assert sorted(os.listdir(tmp_path)) == ["d.zarr"]


@pytest.mark.parametrize("pad", [0, 5])
def test_chunked_windows_equal_in_memory_windows(tmp_path, pad):
    cube = station_cube()
    cube.save(tmp_path / "c.zarr", chunks=small_chunks(cube))
    z = Cube.load(tmp_path / "c.zarr")
    dev = torch.device("cpu")
    mem = WindowSampler(cube, dev, pad_days=pad)
    V = len(VARS)
    block = V * (8 + 12) * (4 + 4) * (4 + 4) * 4
    ch = ChunkedWindowSampler(z, dev, pad_days=pad, block_bytes=1, cache_bytes=3 * block)    # one chunk per block
    assert ch.n_blocks == (9, 4, 5)
    rng = np.random.default_rng(1)
    N = len(cube.target_rows)
    for m, context in ((1, None), (3, None), (2, 9)):
        c = cube.seq_len - 1 if context is None else context
        t = rng.integers(c + m - 1 - pad, cube.n_dates, 300)
        n = rng.integers(0, N, 300)
        xa, ya, da = mem.batch(t, n, m, context)
        xb, yb, db = ch.batch(t, n, m, context)
        assert xb.shape == xa.shape == (300, c + m, V, 5, 5)
        assert torch.equal(xa, xb) and torch.equal(da, db)
        assert torch.equal(torch.nan_to_num(ya, nan=-9), torch.nan_to_num(yb, nan=-9))
        assert xb.stride() == xa.stride()             # the same (V, G, S, k, k) memory layout
    with pytest.raises(ValueError, match="padding"):
        ch.batch(np.array([0]), np.array([0]), 1, pad + 1)
    # order_runs: the same runs, grouped block by block, validity flags moved with their runs
    m = 3
    pairs = rng.choice((cube.n_dates - (cube.seq_len + m - 2)) * N, 400, replace=False)     # distinct runs
    t, n = cube.seq_len + m - 2 + pairs // N, pairs % N
    valid = rng.random((m, 400)) > 0.3
    e, loc, v = ch.order_runs(np.random.default_rng(2), t, n, valid.reshape(-1), m)
    assert sorted(zip(e.tolist(), loc.tolist())) == sorted(zip(t.tolist(), n.tolist()))
    bids = ch.block_of(e, cube.target_rows[loc], cube.target_cols[loc])
    assert (np.diff(bids) != 0).sum() == len(np.unique(bids)) - 1      # each block's runs are consecutive
    key = {(a, b): i for i, (a, b) in enumerate(zip(t.tolist(), n.tolist()))}
    idx = [key[(a, b)] for a, b in zip(e.tolist(), loc.tolist())]
    np.testing.assert_array_equal(v.reshape(m, -1), valid[:, idx])
    before = ch.stats["blocks_read"]
    for g in range(0, 400, 50):               # batches in block order: each block read about once
        xa, _, _ = mem.batch(e[g:g + 50], loc[g:g + 50], m)
        xb, _, _ = ch.batch(e[g:g + 50], loc[g:g + 50], m)
        assert torch.equal(xa, xb)
    assert ch.stats["blocks_read"] - before <= len(np.unique(bids)) + 2
    ch.close()


def test_train_on_zarr_cube_chunk_wise(tmp_path):
    from ismoe_qgis.model.io import load_model
    cube = station_cube(T=120)
    cube.save(tmp_path / "c.zarr", chunks=small_chunks(cube))
    z = Cube.load(tmp_path / "c.zarr")
    logs = []
    cfg = TrainConfig(epochs=2, batch_size=32, samples_per_epoch=256, val_samples=64, seed=3, cube_in_memory="chunked")
    res = train(z, str(tmp_path / "m.pt"), "ismoe", cfg, dict(conv_channels=4, hidden=8),
                Callbacks(log=logs.append))
    assert any(m.startswith("window sampler: CUBE_IN_MEMORY=chunked") for m in logs)
    assert len(res["history"]) == 2 and all(np.isfinite(h["train_loss"]) for h in res["history"])
    assert np.isfinite(res["val_cc"]) and np.isfinite(res["test_cc"])
    model, _cfg, _info = load_model(str(tmp_path / "m.pt"))[:3]
    assert model.cfg.variables == VARS and model.cfg.x_mean == cube.x_mean
    # the same seed through the in-memory path on the .npz cube trains as well; both report one split
    cfg.cube_in_memory = "memory"
    res2 = train(cube, str(tmp_path / "m2.pt"), "ismoe", cfg, dict(conv_channels=4, hidden=8))
    assert res2["split"]["n_train"] == res["split"]["n_train"]


def test_auto_mode_picks_by_size():
    cube = station_cube()
    need = cube.x.nbytes
    assert choose_mode(cube, "auto", available=100 * need)[0] == "memory"
    which, why = choose_mode(cube, "auto", available=need)
    assert which == "chunked" and "available" in why
    assert choose_mode(cube, "memory", available=1)[0] == "memory"      # forced
    assert choose_mode(cube, "chunked", available=1 << 40)[0] == "chunked"
    with pytest.raises(ValueError, match="CUBE_IN_MEMORY must be one of auto, memory, chunked, got 'disk'"):
        choose_mode(cube, "disk")
    s = make_sampler(cube, torch.device("cpu"), 0, "chunked", None)
    assert isinstance(s, ChunkedWindowSampler)


# ---------------------------------------------------------------------------------------------- bad input
def test_zarr_that_is_not_a_cube_is_refused(tmp_path):
    import zarr
    other = tmp_path / "other.zarr"
    g = zarr.open_group(str(other), mode="w")
    g.create_dataset("temperature", shape=(4, 4), chunks=(2, 2), dtype="f4")
    with pytest.raises(DatasetFileError, match=r"other\.zarr is a Zarr store but not an ismoe dataset cube"):
        Cube.load(other)
    folder = tmp_path / "plain.zarr"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(DatasetFileError, match=r"plain\.zarr is a folder but not a Zarr store"):
        Cube.load(folder)
    with pytest.raises(FileNotFoundError, match=r"nothere\.zarr"):
        Cube.load(tmp_path / "nothere.zarr")


def test_partial_copy_names_the_missing_chunks(tmp_path):
    cube = station_cube()
    src = tmp_path / "c.zarr"
    cube.save(src, chunks=small_chunks(cube))
    part = tmp_path / "copy.zarr"
    shutil.copytree(src, part)
    os.remove(part / "data" / "0.3.1.2")
    os.remove(part / "data" / "0.8.3.4")
    with pytest.raises(DatasetFileError) as e:
        Cube.load(part)
    msg = str(e.value)
    assert str(part) in msg and "array 'data' lacks 2 chunk file(s) (0.3.1.2, 0.8.3.4)" in msg and "partial copy" in msg
    shutil.rmtree(part / "target")
    with pytest.raises(DatasetFileError, match=r"copy\.zarr is not a complete ismoe dataset cube: it lacks the "
                                               r"array\(s\) target"):
        Cube.load(part)
    # the metadata file of a complete cube (what a file dialog picks) opens the cube
    assert Cube.load(src / ".zmetadata").x.shape == cube.x.shape


def test_newer_or_damaged_header_is_refused(tmp_path):
    cube = station_cube()
    p = tmp_path / "c.zarr"
    cube.save(p, chunks=small_chunks(cube))
    attrs = json.loads((p / ".zattrs").read_text())
    attrs["ismoe_format"] = "ismoe-cube-zarr/2"
    (p / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(DatasetFileError, match="newer than this plugin reads"):
        Cube.load(p)
    attrs["ismoe_format"] = ZARR_FORMAT
    attrs["meta"]["x_std"] = attrs["meta"]["x_std"][:2]
    (p / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(DatasetFileError, match=r"c\.zarr: its statistics 'x_std' are not 5 finite numbers"):
        Cube.load(p)


def test_saving_over_an_existing_cube_replaces_it(tmp_path):
    p = tmp_path / "c.zarr"
    station_cube(seed=0).save(p, chunks=small_chunks(station_cube()))
    new = station_cube(seed=5)
    new.save(p)
    np.testing.assert_array_equal(np.asarray(Cube.load(p).x), new.x)
    assert sorted(os.listdir(tmp_path)) == ["c.zarr"]

"""CUDA checks (issue 15 item 7), run by ``make gpu-check`` (``pytest -m cuda``); every test skips, saying why,
where torch sees no GPU.

- a few training steps on the GPU equal the same steps on the CPU, and so does a short train();
- bf16 autocast on and off: train() records its autocast check, the tile prediction stays close to fp32;
- tile prediction (inference.predict_tile) on the GPU equals the CPU's, windowed and stateful;
- the cube on the GPU: WindowSampler's gather there equals the CPU's, and predict_cube equals the CPU's;
- 2 ranks of NCCL DistributedDataParallel (torchrun) when 2 GPUs exist give the one-process loss curve.

The data are synthetic and in memory (no GDAL/rasterio needed: a GPU machine may have torch and numpy only).
``ISMOE_CUDA_TESTS_ON_CPU=1`` runs them with the CPU standing in for the GPU: a dry run of the tests' own code
on a machine without one, which proves nothing about CUDA (the NCCL test still skips).
"""
import copy
import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ismoe_qgis.data.cube import Cube  # noqa: E402
from ismoe_qgis.model import inference  # noqa: E402
from ismoe_qgis.model.networks import build_model  # noqa: E402
from ismoe_qgis.model.sampler import WindowSampler  # noqa: E402
from ismoe_qgis.model.train import TrainConfig, loss_terms, model_config_for, train  # noqa: E402

ON_CPU = os.environ.get("ISMOE_CUDA_TESTS_ON_CPU") == "1"
HAVE_GPU = torch.cuda.is_available()
NO_GPU = (f"no CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}): the CUDA "
          f"checks need a GPU (ISMOE_CUDA_TESTS_ON_CPU=1 dry-runs them on the CPU)")
pytestmark = [pytest.mark.cuda] + ([] if HAVE_GPU or ON_CPU else [pytest.mark.skip(reason=NO_GPU)])
GPU = torch.device("cuda" if HAVE_GPU and not ON_CPU else "cpu")
CPU = torch.device("cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# fp32 on both sides: TF32 off (cuDNN and matmul), no autocast. Measured tolerances are in each test.
FACTORS = {"snow": ["snow_depth", "snow_cover"], "radiation": ["net_solar"], "wind": ["u10", "v10"]}
VARIABLES = [v for vs in FACTORS.values() for v in vs]
OPTIONS = {"conv_channels": 8, "hidden": 16, "router_hidden": 8, "dropout": 0.0}   # dropout 0: no RNG stream


def synthetic_cube(T=120, H=16, W=16, k=5, L=7, seed=0):
    """Inputs with a learnable signal (SM follows the 3-day mean of radiation and the snow cover); snow absent
    over the top rows (a silent factor there); a gap."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(VARIABLES), T, H, W)).astype(np.float32)
    x[0:2, :, :4, :] = 0.0
    x[4, 10, 3, 3] = np.nan
    rad = x[VARIABLES.index("net_solar")]
    rad3 = np.stack([rad[max(0, t - 2):t + 1].mean(0) for t in range(T)])
    y = (0.3 + 0.05 * np.tanh(rad3) + 0.02 * x[1] + rng.normal(0, 0.005, size=(T, H, W))).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    grid = {"crs_wkt": 'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
                       'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]',
            "transform": [90.0, 0.1, 0.0, 35.0, 0.0, -0.1], "width": W, "height": H}
    dates = np.datetime64("2019-01-01") + np.arange(T)
    return Cube(x=x, y=y.reshape(T, H * W), target_rows=rows.ravel(), target_cols=cols.ravel(), dates=dates,
                factors=FACTORS, variables=VARIABLES, grid=grid, patch_size=k, seq_len=L)


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube()


@pytest.fixture(autouse=True)
def strict_fp32():
    """TF32 off for the comparisons (it rounds fp32 matmuls/convolutions to 10-bit mantissas on Ampere+)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def bf16_dtype():
    if GPU.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            pytest.skip(f"{torch.cuda.get_device_name(GPU)} has no bf16")
        return torch.bfloat16
    return torch.bfloat16          # the CPU dry run: CPU autocast


def train_cfg(device, amp=False, **kw):
    return TrainConfig(**{**dict(epochs=2, batch_size=64, samples_per_epoch=512, val_samples=500, seed=5,
                                 device=str(device), amp=amp, threads=1, lr=3e-3, val_start="2019-03-01",
                                 test_start="2019-04-01"), **kw})


# --------------------------------------------------------------------------- training
def test_training_steps_on_the_gpu_equal_the_cpu(cube):
    """Six AdamW steps of the training step of train() (gather, forward, loss, backward, clip, step) on the same
    windows: the losses and the weights agree to fp32 tolerance."""
    mc = model_config_for(cube, "ismoe", mixture="convex", **OPTIONS)
    m_cpu = build_model(mc, 3).train()
    m_gpu = copy.deepcopy(m_cpu).to(GPU).train()
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=1e-4) for m in (m_cpu, m_gpu)]
    samplers = [WindowSampler(cube, CPU), WindowSampler(cube, GPU)]
    t_idx, n_idx = np.nonzero(cube.sample_mask(np.ones(cube.n_dates, bool)))
    rng = np.random.default_rng(0)
    cfg = TrainConfig()
    losses = [[], []]
    for _ in range(6):
        pick = rng.choice(len(t_idx), 128, replace=False)
        for i, (m, opt, s) in enumerate(zip((m_cpu, m_gpu), opts, samplers)):
            xb, yb, db = s.batch(t_idx[pick], n_idx[pick])
            loss, _ = loss_terms(m, xb, yb, db, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
            opt.step()
            losses[i].append(float(loss.detach()))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[0][-1] < losses[0][0]                       # the steps did something
    for (name, a), b in zip(m_cpu.state_dict().items(), m_gpu.state_dict().values()):
        np.testing.assert_allclose(b.cpu().numpy(), a.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)


def test_train_on_the_gpu_equals_the_cpu(cube, tmp_path):
    """train() itself, two epochs, fp32: the same loss curve and validation CC on both devices."""
    res = {d: train(cube, str(tmp_path / f"{d.type}.pt"), "ismoe", train_cfg(d), dict(OPTIONS)) for d in (CPU, GPU)}
    assert res[GPU]["device"].startswith(GPU.type)
    for key in ("train_loss", "val_loss", "val_cc"):
        a = np.array([h[key] for h in res[CPU]["history"]])
        b = np.array([h[key] for h in res[GPU]["history"]])
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4, err_msg=key)
    assert abs(res[GPU]["test_cc"] - res[CPU]["test_cc"]) < 1e-3
    assert "amp_check" not in res[GPU]                        # AMP off: no autocast check


def test_bf16_autocast_on_and_off(cube, tmp_path):
    amp = bf16_dtype()
    if GPU.type == "cuda":     # train() autocasts on CUDA only; its autocast check compares with fp32
        on = train(cube, str(tmp_path / "amp.pt"), "ismoe", train_cfg(GPU, amp=True), dict(OPTIONS))
        off = train(cube, str(tmp_path / "fp32.pt"), "ismoe", train_cfg(GPU, amp=False), dict(OPTIONS))
        chk = on["amp_check"]
        assert chk["dtype"] == "bfloat16" and abs(chk["val_cc_amp"] - chk["val_cc_fp32"]) == pytest.approx(
            abs(chk["delta"]), abs=1e-9)
        assert isinstance(chk["ok"], bool) and "amp_check" not in off
        from ismoe_qgis.model.io import load_model
        _, _, info = load_model(str(tmp_path / "amp.pt"), "cpu")
        assert info["amp_ok"] == chk["ok"]
        a = np.array([h["train_loss"] for h in off["history"]])
        b = np.array([h["train_loss"] for h in on["history"]])
        np.testing.assert_allclose(b, a, rtol=0.1)             # bf16 training follows the fp32 curve
    model = build_model(model_config_for(cube, "ismoe", **OPTIONS), 1).to(GPU).eval()
    xt = inference.normalise_block(model, cube.x[:, :40]).to(GPU)
    with torch.no_grad():
        sm32, w32 = inference.predict_tile(model, xt)
        sm16, w16 = inference.predict_tile(model, xt, amp_dtype=amp)
    assert sm16.dtype == torch.float32 and torch.isfinite(sm16).all()
    assert not torch.equal(sm16, sm32)                         # autocast did run in bf16
    assert float((sm16 - sm32).abs().max()) < 0.05             # normalised SM units
    assert float((w16 - w32).abs().max()) < 0.05
    np.testing.assert_allclose(w16.sum(0).cpu().numpy(), 1.0, atol=1e-4)


# --------------------------------------------------------------------------- prediction
@pytest.mark.parametrize("memory,mixture", [("window", "additive"), ("window", "convex"), ("stateful", "additive")])
def test_tile_prediction_on_the_gpu_equals_the_cpu(cube, memory, mixture):
    opts = dict(OPTIONS, memory=memory, mixture=mixture, **({"spin_up": 10} if memory == "stateful" else {}))
    m_cpu = build_model(model_config_for(cube, "ismoe", **opts), 2).eval()
    with torch.no_grad():
        for p in m_cpu.parameters():             # non-trivial weights, so that offsets and paddings show
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    if mixture == "additive":
        m_cpu.contrib_ref.copy_(torch.linspace(-0.2, 0.2, m_cpu.contrib_ref.numel()).view_as(m_cpu.contrib_ref))
    m_gpu = copy.deepcopy(m_cpu).to(GPU)
    xt = inference.normalise_block(m_cpu, cube.x[:, :48])          # (Ttot, V, H, W): a 12 x 12 tile + halo
    doy = torch.from_numpy(inference.day_of_year(cube.dates[cube.seq_len - 1:48]))
    with torch.no_grad():
        a = inference.predict_tile(m_cpu, xt, doy)
        b = inference.predict_tile(m_gpu, xt.to(GPU), doy.to(GPU))
    for name, u, v in zip(("sm", "weights", "state h", "state c"), [a[0], a[1], *(a[2] if len(a) > 2 else ())],
                          [b[0], b[1], *(b[2] if len(b) > 2 else ())]):
        assert v.device.type == GPU.type
        np.testing.assert_allclose(v.cpu().numpy(), u.numpy(), rtol=1e-4, atol=2e-5, err_msg=name)


# --------------------------------------------------------------------------- the cube on the GPU
def test_the_cube_on_the_gpu(cube):
    gpu, cpu = WindowSampler(cube, GPU), WindowSampler(cube, CPU)
    assert gpu.x.device.type == GPU.type and not gpu.host_gather     # a small cube lives on the device
    t_idx, n_idx = np.nonzero(cube.sample_mask(np.ones(cube.n_dates, bool)))
    pick = np.random.default_rng(1).choice(len(t_idx), 300, replace=False)
    for m in (1, 4):
        t = np.maximum(t_idx[pick], cube.seq_len - 1 + m - 1)
        for u, v in zip(cpu.batch(t, n_idx[pick], m), gpu.batch(t, n_idx[pick], m)):
            assert v.device.type == GPU.type
            assert torch.equal(v.cpu(), u)                  # a gather: bit for bit
    model = build_model(model_config_for(cube, "ismoe", **OPTIONS), 4).eval()
    sm_c, w_c = inference.predict_cube(model, cube, tile_size=8, time_chunk=16, device=CPU)
    sm_g, w_g = inference.predict_cube(copy.deepcopy(model).to(GPU), cube, tile_size=8, time_chunk=16, device=GPU)
    sm_c, w_c, sm_g, w_g = (np.asarray(a.cpu() if hasattr(a, "cpu") else a) for a in (sm_c, w_c, sm_g, w_g))
    np.testing.assert_array_equal(np.isnan(sm_g), np.isnan(sm_c))
    assert np.isfinite(sm_c).mean() > 0.9
    np.testing.assert_allclose(sm_g, sm_c, rtol=1e-4, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(w_g, w_c, atol=1e-5, equal_nan=True)


# --------------------------------------------------------------------------- NCCL DDP
def _ddp_support():
    """Why train() cannot run distributed yet, or None."""
    if importlib.util.find_spec("ismoe_qgis.model.distributed") is None:
        return "ismoe_qgis.model.distributed does not exist (issue 15 item 4): train() has no torchrun support"
    import ismoe_qgis.model.train as t
    if "distributed" not in inspect.getsource(t):
        return "train() does not use ismoe_qgis.model.distributed yet (issue 15 item 4)"
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return f"torch {torch.__version__} has no NCCL backend"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nccl_ranks_give_the_one_process_loss_curve(cube, tmp_path):
    if GPU.type != "cuda" or torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs for 2 NCCL ranks, torch sees {torch.cuda.device_count() if HAVE_GPU else 0}")
    why = _ddp_support()
    if why:
        pytest.skip(why)
    path = str(tmp_path / "cube.npz")
    cube.save(path)
    args = ["--dataset", path, "--epochs", "2", "--batch-size", "64", "--samples-per-epoch", "512",
            "--val-samples", "500", "--seed", "5", "--device", "cuda", "--no-amp", "--threads", "1",
            "--learning-rate", "0.003", "--val-start", "2019-03-01", "--test-start", "2019-04-01",
            "--conv-channels", "8", "--hidden", "16", "--router-hidden", "8", "--dropout", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "ismoe_qgis", "train",
                          *args, "--output", str(tmp_path / "ddp.pt")],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "ismoe_qgis", "train", *args, "--output", str(tmp_path / "one.pt")],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    h2, h1 = json.loads(two.stdout)["history"], json.loads(one.stdout)["history"]   # rank 0 prints the result
    assert [h["epoch"] for h in h2] == [h["epoch"] for h in h1] == [1, 2]
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([h[key] for h in h2], [h[key] for h in h1], rtol=1e-3, err_msg=key)
    from ismoe_qgis.model.io import load_model
    _, cfg, info = load_model(str(tmp_path / "ddp.pt"), "cpu")
    assert cfg.hidden == 16 and info["best_epoch"] in (1, 2)

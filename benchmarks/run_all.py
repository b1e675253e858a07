#!/usr/bin/env python
"""ismoe_qgis benchmarks (issue 6): our implementation vs naive references, side by side, one run.

    .venv/bin/python benchmarks/run_all.py [--full] [--device auto|cpu|cuda]
        [--out out/bench/performance.json] [--only train,predict,e2e,scaling]
    .venv/bin/python benchmarks/run_all.py --gpu-check     # make gpu-check: the GPU targets, one table

Parts (see benchmarks/README.md):
  train    training throughput (samples/s; forward + backward + optimizer step) of WindowSampler +
           SoilMoistureNet vs benchmarks/naive.py (Python loop over per-expert nn.Conv2d + nn.LSTM
           modules, patches cut on the CPU with numpy per batch). On CUDA also bf16 autocast and our
           own CPU training (few steps) for the GPU-vs-CPU ratio.
  predict  prediction throughput (pixel-days/s): predict_tile vs patch-by-patch prediction
           (every pixel's k x k x L patch cut out, naive model and our model in batches).
  e2e      predict_to_folder on real GeoTIFFs (rasterio windowed, boundless reads) vs the I/O floor
           (the same reads and same-size writes, no model).
  scaling  training step and tile prediction time vs experts (1, 3, 6, 9), patch size (3, 7, 11)
           and sequence length (7, 14, 30).
  ensemble one training step (fwd + bwd + AdamW) of an ENSEMBLE of N members (stacked on the experts'
           axis, one pass) against N times a single model's step, N = 3 and 5, train()'s batch (64) and
           a bigger one (256); and tile prediction of N members against one.
  memory   MEMORY=stateful against MEMORY=window (L = 14), same experts: streaming tile prediction
           (pixel-days/s, one LSTM step per pixel-day against L), end-to-end predict_to_folder on the
           same GeoTIFFs, and training throughput counted as supervised days/s (stateful: sequences of
           365 spin-up + 32 supervised days, 8 a batch; windowed: 256 windows a batch).

Timings of the implementations being compared are interleaved (round-robin) and the median is
reported, so that a change of machine load during the run hits both sides alike.
"""
import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import naive  # noqa: E402
from ismoe_qgis.data.cube import Cube  # noqa: E402
from ismoe_qgis.data.demo import FACTORS as DEMO_FACTORS  # noqa: E402  (6 factors, 11 variables)
from ismoe_qgis.model import inference  # noqa: E402
from ismoe_qgis.model.networks import SoilMoistureNet  # noqa: E402
from ismoe_qgis.model.device import autocast_dtype, resolve_device  # noqa: E402
from ismoe_qgis.model.sampler import WindowSampler, draw_runs  # noqa: E402
from ismoe_qgis.model.train import TrainConfig, loss_terms, model_config_for  # noqa: E402

HIDDEN, CONV_CHANNELS, ROUTER_HIDDEN = 64, 16, 32
WGS84 = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],'
         'UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]')

# Sizes. 'small' (default) finishes in a few minutes on a 2-core CPU; 'full' is the sizes.
SIZES = {
    "small": {
        "train": {"T": 64, "H": 40, "W": 40, "targets": 600, "batch": 256,
                  "cpu": {"warmup": 2, "rounds": 6, "steps": 3},
                  "cuda": {"warmup": 10, "rounds": 5, "steps": 20},
                  "cpu_ref_on_gpu": {"warmup": 1, "rounds": 1, "steps": 3}},
        "predict": {"tile": 32, "days": 30, "patch_batch": 1024,
                    "cpu": {"rounds": 2, "naive_pixel_days": 2048},
                    "cuda": {"rounds": 5, "naive_pixel_days": 32768}},
        "e2e": {"size": 128, "days": 30, "tile_size": 64, "time_chunk": 64},
        "memory": {"tile": 32, "days": 64, "e2e_size": 96, "e2e_days": 64, "rounds": 3, "train_steps": 3},
        "ensemble": {"T": 64, "H": 40, "W": 40, "targets": 600, "members": [3, 5], "batches": [64, 256],
                     "rounds": 3, "steps": 3, "tile": 24, "days": 30},
        "scaling": {"T": 64, "H": 24, "W": 24, "targets": 300, "batch": 256, "tile": 24, "days": 8,
                    "cpu": {"warmup": 1, "rounds": 2, "steps": 1},
                    "cuda": {"warmup": 5, "rounds": 3, "steps": 10}},
    },
    "full": {
        "train": {"T": 365, "H": 128, "W": 128, "targets": 4000, "batch": 256,
                  "cpu": {"warmup": 3, "rounds": 5, "steps": 4},
                  "cuda": {"warmup": 20, "rounds": 5, "steps": 50},
                  "cpu_ref_on_gpu": {"warmup": 1, "rounds": 1, "steps": 5}},
        "predict": {"tile": 128, "days": 30, "patch_batch": 4096,
                    "cpu": {"rounds": 3, "naive_pixel_days": 16384},
                    "cuda": {"rounds": 5, "naive_pixel_days": 131072}},
        "e2e": {"size": 1024, "days": 30, "tile_size": 128, "time_chunk": 64},
        "memory": {"tile": 128, "days": 128, "e2e_size": 512, "e2e_days": 128, "rounds": 3, "train_steps": 5},
        "ensemble": {"T": 365, "H": 128, "W": 128, "targets": 4000, "members": [3, 5], "batches": [64, 256],
                     "rounds": 5, "steps": 5, "tile": 64, "days": 30},
        "scaling": {"T": 120, "H": 48, "W": 48, "targets": 1000, "batch": 256, "tile": 64, "days": 30,
                    "cpu": {"warmup": 2, "rounds": 3, "steps": 2},
                    "cuda": {"warmup": 10, "rounds": 5, "steps": 20}},
    },
}
# --gpu-check (make gpu-check): the parts with GPU targets, sized to finish in a few minutes on one H100/H200
# (train: 5 trainers x 250 steps of batch 256 + 6 CPU steps; predict: a 128 x 128 x 30-day tile; e2e: the
# issue's 1024 x 1024 x 30-day grid in 256-pixel tiles, 11 input GeoTIFFs of 43 bands written first)
SIZES["gpu"] = {**SIZES["full"],
                "train": {**SIZES["full"]["train"], "T": 200, "H": 96, "W": 96,
                          "cpu_ref_on_gpu": {"warmup": 1, "rounds": 2, "steps": 3}},
                "e2e": {"size": 1024, "days": 30, "tile_size": 256, "time_chunk": 64}}
GPU_CHECK_PARTS = ("train", "predict", "e2e")
REF_TOL = 1e-4   # naive reference vs ours, same weights: larger means naive.py no longer follows networks.py
TARGETS = {   # (part, comparison, device type) -> minimum ratio (issue 6)
    ("train", "ours/naive", "cpu"): 2.0,
    ("predict", "tile/naive_patch", "cpu"): 10.0,
    ("train", "ours/naive", "cuda"): 3.0,
    ("train", "gpu/cpu", "cuda"): 20.0,
    ("memory", "stateful/window predict_tile", "cpu"): 7.0,
    # an N-member step must cost at most 0.6 N single steps: the ratio N * single / ensemble >= 1 / 0.6
    ("ensemble", "N*single/ensemble train", "cpu"): 1 / 0.6,
    ("memory", "stateful/window e2e", "cpu"): 5.0,
    ("e2e", "e2e/floor", "cuda"): 2.0,        # at most: end-to-end predict within 2x of the I/O floor (issue 15)
}
AT_MOST = {("e2e", "e2e/floor", "cuda")}      # targets that are a maximum (lower is better)


# ----------------------------------------------------------------------------- helpers

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def log(msg):
    print(msg, flush=True)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_MMAP_THRESHOLD = 32 * 2 ** 20     # glibc's largest mmap threshold on 64-bit systems
KEEP_TRIM_THRESHOLD = 2 ** 30


def set_malloc(regime):
    """The C allocator's regime for the whole run, so that timings do not depend on the process's
    history. With glibc's defaults the mmap threshold adapts to what was freed before, and each
    step's large tensors may come from fresh pages: on the 2-core VM the naive training step took
    98-240 ms depending on what ran before it (page faults), ours 51-53 ms.
    - 'keep' (default): freed memory stays with the process (mmap threshold 32 MiB, trim threshold
      1 GiB): no page faults in the steady state; the naive reference at its fastest.
    - 'default': glibc as it comes (what a QGIS process runs with).
    Returns what was set (for the JSON)."""
    if regime == "default":
        return {"regime": "default"}
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError) as e:      # not glibc (macOS, Windows, musl)
        return {"regime": "default", "note": f"mallopt unavailable: {e}"}
    return {"regime": "keep", "mmap_threshold": KEEP_MMAP_THRESHOLD, "trim_threshold": KEEP_TRIM_THRESHOLD,
            "ok": ok}


def describe_machine(device, threads):
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        avail = len(os.sched_getaffinity(0))
    except AttributeError:
        avail = os.cpu_count()
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    d = {"cpu_model": cpu, "logical_cpus": os.cpu_count(), "cpus_available": avail, "torch_threads": threads,
         "memory_gib": round(mem_gib, 1) if mem_gib else None,
         "os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
         "numpy": np.__version__, "device": str(device), "gpu": None}
    try:
        import rasterio
        d["rasterio"], d["gdal"] = rasterio.__version__, rasterio.__gdal_version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        i = device.index if (device.type == "cuda" and device.index is not None) else 0
        props = torch.cuda.get_device_properties(i)
        d["gpu"] = {"name": torch.cuda.get_device_name(i), "capability": list(torch.cuda.get_device_capability(i)),
                    "memory_gib": round(props.total_memory / 2 ** 30, 1), "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported(),
                    "count": torch.cuda.device_count()}
    return d


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def make_cube(factors, T, H, W, n_targets, k, L, seed=0):
    """A synthetic cube (random inputs/targets: only shapes matter for speed). The snow factor (or
    the first one) is zero over the top third of the grid, so the silent-factor path is exercised."""
    rng = np.random.default_rng(seed)
    variables = [v for vs in factors.values() for v in vs]
    x = rng.standard_normal((len(variables), T, H, W), dtype=np.float32)
    first = list(factors.values())[0]
    for v in first:
        x[variables.index(v), :, :H // 3, :] = 0.0
    n = min(n_targets, H * W)
    pix = rng.choice(H * W, n, replace=False)
    y = rng.normal(0.3, 0.05, size=(T, n)).astype(np.float32)
    grid = {"crs_wkt": WGS84, "transform": [80.0, 0.01, 0.0, 35.0, 0.0, -0.01], "width": W, "height": H}
    dates = np.datetime64("2019-01-01") + np.arange(T)
    return Cube(x=x, y=y, target_rows=pix // W, target_cols=pix % W, dates=dates, factors=factors,
                variables=variables, grid=grid, patch_size=k, seq_len=L)


def synthetic_factors(E, per_factor=2):
    return {f"f{e}": [f"f{e}_v{j}" for j in range(per_factor)] for e in range(E)}


def make_model(cube, device):
    torch.manual_seed(0)
    # convex: the naive reference is the paper's convex MoE with a router (the additive default has none)
    cfg = model_config_for(cube, "ismoe", conv_channels=CONV_CHANNELS, hidden=HIDDEN, router_hidden=ROUTER_HIDDEN,
                           mixture="convex")
    return SoilMoistureNet(cfg).to(device)


def make_naive(model, device):
    nm = naive.NaiveMoE(model.factor_index, model.cfg.patch_size, CONV_CHANNELS, HIDDEN, ROUTER_HIDDEN,
                        model.cfg.dropout, model.cfg.mask_silent)
    dev = next(iter(model.parameters())).device
    naive.copy_weights_from(nm, model.cpu())
    model.to(dev)
    return nm.to(device)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def ratio(a, b):
    return a / b if (b and b == b and a == a) else float("nan")


def verdict(part, comp, dev_type, value):
    t = TARGETS.get((part, comp, dev_type))
    if t is None:
        return None, ""
    if (part, comp, dev_type) in AT_MOST:
        return t, ("PASS" if value <= t else "FAIL")
    return t, ("PASS" if value >= t else "FAIL")


# ----------------------------------------------------------------------------- training

class OursTrainer:
    """The training step of ismoe_qgis.model.train.train(): runs of `consecutive_days` days per
    location (train()'s default unless given; batch = the same number of windows as the naive
    reference's), WindowSampler gather, autocast, loss_terms, backward, grad clipping, AdamW step,
    loss read back (as train() does per batch)."""

    def __init__(self, cube, device, amp_dtype=None, compile_model=False, consecutive_days=None):
        self.device, self.amp = device, amp_dtype
        self.model = make_model(cube, device).train()
        self.run = torch.compile(self.model) if compile_model else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=2e-3, weight_decay=1e-4)
        self.sampler = WindowSampler(cube, device)
        self.cfg = TrainConfig()
        self.m = self.cfg.consecutive_days if consecutive_days is None else consecutive_days
        self.mask = cube.sample_mask(np.ones(cube.n_dates, bool), "fill")
        self.rng = np.random.default_rng(7)
        self.L = cube.seq_len

    def step(self, t_idx, n_idx):
        """t_idx, n_idx: the batch's B samples; with m > 1 runs of m days around B / m of them."""
        G = max(1, len(t_idx) // self.m)
        end, loc, valid = draw_runs(self.rng, self.mask, np.asarray(t_idx), np.asarray(n_idx), G, self.m, self.L)
        xb, yb, db = self.sampler.batch(end, loc, self.m)
        valid = torch.from_numpy(valid).to(yb.device)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss, _ = loss_terms(self.run, xb, yb, db, self.cfg, valid)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        return float(loss.detach())


class NaiveTrainer:
    """The same step with the naive reference: numpy patch cut per batch, Python loop over experts."""

    def __init__(self, cube, device, amp_dtype=None):
        self.device, self.amp = device, amp_dtype
        ours = make_model(cube, torch.device("cpu"))
        self.model = make_naive(ours, device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=2e-3, weight_decay=1e-4)
        self.cutter = naive.NaivePatchCutter(cube, device)

    def step(self, t_idx, n_idx):
        xb, yb = self.cutter.batch(t_idx, n_idx)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = naive.naive_loss(self.model, xb, yb, 0.5)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        return float(loss.detach())


class IndexStream:
    """Reproducible random (t, n) batches; every trainer sees the same sequence."""

    def __init__(self, cube, batch, seed=123):
        self.T, self.N, self.L, self.B = cube.n_dates, len(cube.target_rows), cube.seq_len, batch
        self.seed = seed

    def fresh(self):
        rng = np.random.default_rng(self.seed)
        while True:
            yield rng.integers(self.L - 1, self.T, self.B), rng.integers(0, self.N, self.B)


def time_trainers(trainers, cube, batch, device_of, warmup, rounds, steps):
    """trainers: {name: trainer}; interleaved rounds. Returns {name: [seconds per step per round]}."""
    streams = {n: IndexStream(cube, batch).fresh() for n in trainers}
    out = {n: [] for n in trainers}
    errors = {}
    for n, tr in trainers.items():
        try:
            for _ in range(warmup):
                tr.step(*next(streams[n]))
            sync(device_of[n])
        except Exception as e:  # e.g. an op without bf16 support on this GPU: report, do not crash
            errors[n] = f"{type(e).__name__}: {e}"
    for _ in range(rounds):
        for n, tr in trainers.items():
            if n in errors:
                continue
            dev = device_of[n]
            sync(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                tr.step(*next(streams[n]))
            sync(dev)
            out[n].append((time.perf_counter() - t0) / steps)
    return out, errors


def check_reference(cube, device):
    """Sanity check of the naive reference: same windows and same function as ours (eval mode)."""
    cpu = torch.device("cpu")
    model = make_model(cube, cpu).eval()
    nm = make_naive(model, cpu).eval()
    sampler, cutter = WindowSampler(cube, cpu), naive.NaivePatchCutter(cube, cpu)
    t, n = next(IndexStream(cube, 64).fresh())
    xb, yb, db = sampler.batch(t, n)
    xn, yn = cutter.batch(t, n)
    with torch.no_grad():
        a, b = model(xb, db), nm(xn)
    return {"same_windows": bool(torch.equal(xb, xn) and torch.equal(yb, yn)),
            "max_abs_diff_y": float((a[0] - b[0]).abs().max()),
            "max_abs_diff_weights": float((a[1] - b[1]).abs().max())}


def bench_train(S, device, args):
    cfg = S["train"]
    k, L, B = 7, 14, cfg["batch"]
    cube = make_cube(DEMO_FACTORS, cfg["T"], cfg["H"], cfg["W"], cfg["targets"], k, L)
    res = {"sizes": {"experts": len(DEMO_FACTORS), "variables": sum(map(len, DEMO_FACTORS.values())), "patch": k, "seq_len": L, "hidden": HIDDEN,
                     "conv_channels": CONV_CHANNELS, "batch": B,
                     "cube": [11, cfg["T"], cfg["H"], cfg["W"]], "targets": cfg["targets"]},
           "reference_check": check_reference(cube, device), "rows": [], "ratios": []}
    rc = res["reference_check"]
    rc["ok"] = rc["same_windows"] and rc["max_abs_diff_y"] < REF_TOL and rc["max_abs_diff_weights"] < REF_TOL
    log(f"  reference check: {res['reference_check']}")
    dev_cfg = cfg["cuda" if device.type == "cuda" else "cpu"]
    trainers, dev_of, meta = {}, {}, {}
    trainers["ours"] = OursTrainer(cube, device)
    trainers["naive"] = NaiveTrainer(cube, device)
    trainers["ours_runs4"] = OursTrainer(cube, device, consecutive_days=4)
    meta["ours"] = meta["naive"] = meta["ours_runs4"] = (device, "fp32")
    amp = autocast_dtype(device, True)
    if amp is not None:
        trainers["ours_amp"] = OursTrainer(cube, device, amp)
        trainers["naive_amp"] = NaiveTrainer(cube, device, amp)
        meta["ours_amp"] = meta["naive_amp"] = (device, str(amp).replace("torch.", ""))
    if args.compile:
        try:
            trainers["ours_compiled"] = OursTrainer(cube, device, amp, compile_model=True)
            meta["ours_compiled"] = (device, str(amp).replace("torch.", "") if amp else "fp32")
        except Exception as e:
            log(f"  torch.compile unavailable: {e}")
    for n in trainers:
        dev_of[n] = device
    times, errors = time_trainers(trainers, cube, B, dev_of, dev_cfg["warmup"], dev_cfg["rounds"], dev_cfg["steps"])
    log("  " + ", ".join(f"{n} {1e3 * median(v):.0f} ms/step" for n, v in times.items() if v))
    if device.type == "cuda":   # our own CPU training, few steps, for the GPU-vs-CPU ratio
        c = cfg["cpu_ref_on_gpu"]
        cpu = torch.device("cpu")
        t_cpu, e_cpu = time_trainers({"ours_cpu": OursTrainer(cube, cpu)}, cube, B, {"ours_cpu": cpu},
                                     c["warmup"], c["rounds"], c["steps"])
        times.update(t_cpu)
        errors.update(e_cpu)
        meta["ours_cpu"] = (cpu, "fp32")
    sps = {}
    for n, ts in times.items():
        if n in errors:
            res["rows"].append({"name": n, "device": str(meta[n][0]), "dtype": meta[n][1], "error": errors[n]})
            continue
        sps[n] = B / median(ts)
        res["rows"].append({"name": n, "device": str(meta[n][0]), "dtype": meta[n][1],
                            "step_ms": 1e3 * median(ts), "samples_per_s": sps[n],
                            "step_ms_rounds": [round(1e3 * t, 2) for t in ts]})

    def add(comp, num, den, label):
        if num in sps and den in sps:
            r = sps[num] / sps[den]
            tgt, v = verdict("train", comp, device.type, r)
            res["ratios"].append({"comparison": comp, "what": label, "ratio": r, "target": tgt, "verdict": v})
    m = trainers["ours"].m
    add("ours/naive", "ours", "naive", f"ours (train() default, CONSECUTIVE_DAYS={m}) vs naive, {device.type} fp32")
    add("runs4/naive", "ours_runs4", "naive", f"option CONSECUTIVE_DAYS=4 (correlated windows) vs naive, "
                                             f"{device.type} fp32")
    add("runs4/ours", "ours_runs4", "ours", "CONSECUTIVE_DAYS=4 vs default (convolution shared by 4 windows)")
    res["sizes"]["consecutive_days"] = m
    if amp is not None:
        add("ours/naive (amp)", "ours_amp", "naive_amp", f"ours vs naive, {device.type} {meta['ours_amp'][1]}")
        add("amp/fp32", "ours_amp", "ours", f"ours {meta['ours_amp'][1]} vs ours fp32")
    if device.type == "cuda":
        best = "ours_amp" if "ours_amp" in sps else "ours"
        add("gpu/cpu", best, "ours_cpu", f"ours GPU ({meta[best][1]}, train() default) vs ours CPU fp32")
        if best != "ours":
            add("gpu/cpu (fp32)", "ours", "ours_cpu", "ours GPU fp32 vs ours CPU fp32")
    if "ours_compiled" in sps:
        add("compiled/eager", "ours_compiled", "ours_amp" if amp is not None else "ours", "torch.compile vs eager")
    return res


# ----------------------------------------------------------------------------- prediction

def bench_predict(S, device, args):
    cfg = S["predict"]
    dcfg = cfg["cuda" if device.type == "cuda" else "cpu"]
    k, L, tile, T = 7, 14, cfg["tile"], cfg["days"]
    r, Ttot = k // 2, T + L - 1
    cube = make_cube(DEMO_FACTORS, Ttot, tile + 2 * r, tile + 2 * r, 4, k, L, seed=1)
    model = make_model(cube, device).eval()
    nm = make_naive(model, device).eval()
    xt_cpu = inference.normalise_block(model, cube.x)                 # Ttot, V, tile+2r, tile+2r
    xt_np = xt_cpu.numpy()
    xt = xt_cpu.to(device)
    doy = torch.from_numpy(inference.day_of_year(cube.dates[L - 1:])).to(device)
    P = tile * tile
    n_naive = min(dcfg["naive_pixel_days"], P * T)
    # pixel-days in raster order (pixel-major, all dates of a pixel together)
    ids = np.arange(n_naive)
    p_idx, t_idx = ids // T, ids % T
    pb = cfg["patch_batch"]
    amp = autocast_dtype(device, True)

    def run_tile(amp_dtype=None, **kw):
        sm, w = inference.predict_tile(model, xt, doy, amp_dtype=amp_dtype, **kw)
        return sm, w

    def run_patches(net, is_naive):
        outs = []
        for s in range(0, n_naive, pb):
            xb = torch.from_numpy(naive.naive_patch_windows(xt_np, L, k, t_idx[s:s + pb], p_idx[s:s + pb], tile))
            xb = xb.to(device)
            with torch.no_grad():
                y = net(xb)[0] if is_naive else net(xb, doy[t_idx[s:s + pb]])[0]
            outs.append(y)
        return torch.cat(outs)

    jobs = {"ours_tile": (lambda: run_tile(None), P * T),
            "naive_patch": (lambda: run_patches(nm, True), n_naive),
            "ours_patch": (lambda: run_patches(model, False), n_naive)}
    if amp is not None:
        jobs["ours_tile_amp"] = (lambda: run_tile(amp), P * T)
    if device.type == "cpu" and args.cpu_chunk_windows:
        # tuning information, not the verdict: the same call with a cache-sized window chunk
        cw = args.cpu_chunk_windows
        jobs[f"ours_tile_cw{cw}"] = (lambda: run_tile(None, chunk_windows=cw), P * T)
    # warm-up + check: tile prediction == patch prediction of the naive reference on the subset
    sm, _ = jobs["ours_tile"][0]()
    y_naive = jobs["naive_patch"][0]()
    jobs["ours_patch"][0]()
    sm_sub = sm.permute(1, 2, 0).reshape(P, T)[p_idx, t_idx]
    check = float((sm_sub - y_naive).abs().max())
    errors = {}
    for n in [j for j in jobs if j.startswith("ours_tile_")]:
        try:
            jobs[n][0]()
        except Exception as e:   # e.g. an autocast dtype mismatch: report it, keep the other rows
            errors[n] = f"{type(e).__name__}: {e}"
            log(f"  {n} failed: {errors[n]}")
            del jobs[n]
    sync(device)
    times = {n: [] for n in jobs}
    for _ in range(dcfg["rounds"]):
        for n, (fn, _) in jobs.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    log("  " + ", ".join(f"{n} {median(v):.2f}s" for n, v in times.items()))
    res = {"sizes": {"tile": [tile, tile], "days": T, "seq_len": L, "patch": k, "experts": len(DEMO_FACTORS),
                     "naive_pixel_days": n_naive, "patch_batch": pb},
           "reference_check": {"max_abs_diff_tile_vs_naive_patch": check, "ok": check < REF_TOL},
           "rows": [{"name": n, "device": str(device), "dtype": str(amp).replace("torch.", ""), "error": e}
                    for n, e in errors.items()], "ratios": []}
    pds = {}
    for n, ts in times.items():
        pds[n] = jobs[n][1] / median(ts)
        res["rows"].append({"name": n, "device": str(device),
                            "dtype": str(amp).replace("torch.", "") if n.endswith("_amp") else "fp32",
                            "note": "tuning info: same call, chunk_windows=%s" % n.split("_cw")[1] if "_cw" in n else "",
                            "pixel_days": jobs[n][1], "seconds": median(ts), "pixel_days_per_s": pds[n],
                            "seconds_rounds": [round(t, 4) for t in ts]})
    for comp, a, b, label in (("tile/naive_patch", "ours_tile", "naive_patch", "tile vs naive model patch-wise"),
                              ("tile/ours_patch", "ours_tile", "ours_patch", "tile vs our model patch-wise"),
                              ("tile_amp/tile", "ours_tile_amp", "ours_tile", "tile bf16 vs tile fp32"),
                              ("tile_cw/naive_patch", f"ours_tile_cw{args.cpu_chunk_windows}", "naive_patch",
                               f"(tuning) tile with chunk_windows={args.cpu_chunk_windows} vs naive patch")):
        if a in pds and b in pds:
            rv = pds[a] / pds[b]
            tgt, v = verdict("predict", comp, device.type, rv)
            res["ratios"].append({"comparison": comp, "what": label, "ratio": rv, "target": tgt, "verdict": v})
    log(f"  reference check: {res['reference_check']}")
    return res


# ----------------------------------------------------------------------------- end to end

def write_inputs(folder, factors, size, n_dates, seed=2):
    """One float32 GeoTIFF per variable, one band per date (tiled 256, uncompressed), like
    aligned factor rasters on the reference grid."""
    import rasterio
    from rasterio.transform import Affine
    rng = np.random.default_rng(seed)
    variables = [v for vs in factors.values() for v in vs]
    transform = Affine(0.01, 0.0, 80.0, 0.0, -0.01, 35.0)
    blk = 256 if size >= 256 else 16 * max(1, size // 16)
    prof = dict(driver="GTiff", width=size, height=size, count=n_dates, dtype="float32", crs="EPSG:4326",
                transform=transform, nodata=None, tiled=True, blockxsize=blk, blockysize=blk, interleave="band")
    paths = []
    for i, v in enumerate(variables):
        p = os.path.join(folder, f"{v}.tif")
        with rasterio.open(p, "w", **prof) as ds:
            for t0 in range(0, n_dates, 8):
                t1 = min(n_dates, t0 + 8)
                a = rng.standard_normal((t1 - t0, size, size), dtype=np.float32) * 2.0 + i
                ds.write(a, indexes=list(range(t0 + 1, t1 + 1)))
        paths.append(p)
    grid = {"crs_wkt": WGS84, "transform": list(transform.to_gdal()), "width": size, "height": size}
    return paths, variables, grid


class RasterioBlockReader:
    """read_block for predict_to_folder: rasterio windowed reads, boundless=True, NaN fill."""

    def __init__(self, paths):
        import rasterio
        self.ds = [rasterio.open(p) for p in paths]

    def __call__(self, row_off, col_off, height, width, t0, t1):
        from rasterio.windows import Window
        win = Window(col_off, row_off, width, height)
        out = np.empty((len(self.ds), t1 - t0, height, width), np.float32)
        idx = list(range(t0 + 1, t1 + 1))
        for i, ds in enumerate(self.ds):
            out[i] = ds.read(indexes=idx, window=win, boundless=True, fill_value=np.nan, out_dtype="float32")
        return out

    def close(self):
        for d in self.ds:
            d.close()


def io_floor(read_block, grid, dates, L, r, names, out_dir, tile_size, time_chunk):
    """The I/O of predict_to_folder without the model: the same tile/time-chunk reads (with halo),
    the same output files (profile, band descriptions, windows), data taken from the inputs."""
    import rasterio
    from rasterio.windows import Window
    T = len(dates) - L + 1
    out_dates = dates[L - 1:]
    prof = inference._profile(grid, T)
    os.makedirs(out_dir, exist_ok=True)
    files = ["sm"] + list(names)
    dsts = {f: rasterio.open(os.path.join(out_dir, f"{f}.tif"), "w", **prof) for f in files}
    try:
        for ds in dsts.values():
            for i, d in enumerate(out_dates, start=1):
                ds.set_band_description(i, str(d))
        H, W = grid["height"], grid["width"]
        for r0 in range(0, H, tile_size):
            for c0 in range(0, W, tile_size):
                h, w = min(tile_size, H - r0), min(tile_size, W - c0)
                for t0 in range(0, T, time_chunk):
                    t1 = min(T, t0 + time_chunk)
                    raw = read_block(r0 - r, c0 - r, h + 2 * r, w + 2 * r, t0, t1 + L - 1)
                    centre = raw[:, L - 1:, r:r + h, r:r + w]
                    win = Window(c0, r0, w, h)
                    idx = list(range(t0 + 1, t1 + 1))
                    for j, f in enumerate(files):      # same-size outputs with input-like content
                        dsts[f].write(np.ascontiguousarray(centre[j % centre.shape[0]]), indexes=idx, window=win)
    finally:
        for ds in dsts.values():
            ds.close()


def bench_e2e(S, device, args):
    cfg = S["e2e"]
    size, T, k, L = cfg["size"], cfg["days"], 7, 14
    n_dates = T + L - 1
    tmp = tempfile.mkdtemp(prefix="ismoe_bench_e2e_", dir=args.tmpdir)
    try:
        t0 = time.perf_counter()
        paths, variables, grid = write_inputs(os.path.join(tmp), DEMO_FACTORS, size, n_dates)
        t_write = time.perf_counter() - t0
        log(f"  wrote {len(paths)} input GeoTIFFs {size}x{size}x{n_dates} bands in {t_write:.1f}s")
        dates = np.datetime64("2019-01-01") + np.arange(n_dates)
        stub = make_cube(DEMO_FACTORS, L + 1, 8, 8, 4, k, L)
        model = make_model(stub, device).eval()
        amp = autocast_dtype(device, True)
        reader = RasterioBlockReader(paths)
        runs = {"floor": [], "ours": []}
        amp_used = [amp]
        try:
            def run_floor(i):
                d = os.path.join(tmp, f"floor{i}")
                t = time.perf_counter()
                io_floor(reader, grid, dates, L, k // 2, model.output_names, d, cfg["tile_size"], cfg["time_chunk"])
                runs["floor"].append(time.perf_counter() - t)
                log(f"  I/O floor run {i + 1}: {runs['floor'][-1]:.2f}s")
                shutil.rmtree(d, ignore_errors=True)

            def run_ours(i):
                d = os.path.join(tmp, f"pred{i}")
                sync(device)
                t = time.perf_counter()
                try:
                    inference.predict_to_folder(model, reader, grid, dates, d, tile_size=cfg["tile_size"],
                                                time_chunk=cfg["time_chunk"], device=device, amp_dtype=amp_used[0])
                except Exception as e:
                    if amp_used[0] is None:
                        raise
                    runs["amp_error"] = f"{type(e).__name__}: {e}"
                    log(f"  predict_to_folder with {amp_used[0]} failed ({runs['amp_error']}); measuring fp32")
                    amp_used[0] = None
                    shutil.rmtree(d, ignore_errors=True)
                    sync(device)
                    t = time.perf_counter()
                    inference.predict_to_folder(model, reader, grid, dates, d, tile_size=cfg["tile_size"],
                                                time_chunk=cfg["time_chunk"], device=device, amp_dtype=None)
                sync(device)
                runs["ours"].append(time.perf_counter() - t)
                log(f"  predict_to_folder run {i + 1}: {runs['ours'][-1]:.2f}s")
                if i == 0:
                    with __import__("rasterio").open(os.path.join(d, "sm.tif")) as ds:
                        runs["check"] = {"sm_shape": [ds.count, ds.height, ds.width]}
                shutil.rmtree(d, ignore_errors=True)
            run_floor(0)
            run_ours(0)
            run_floor(1)   # floor measured before and after: page cache and load drift hit both sides
        finally:
            reader.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    floor, ours = min(runs["floor"]), median(runs["ours"])
    px = size * size * T
    res = {"sizes": {"grid": [size, size], "input_dates": n_dates, "output_dates": T, "variables": len(variables),
                     "output_files": 1 + len(model.output_names), "tile_size": cfg["tile_size"],
                     "time_chunk": cfg["time_chunk"],
                     "amp": str(amp_used[0]).replace("torch.", "") if amp_used[0] else "fp32"},
           "output_check": runs.get("check"), "input_write_s": t_write, "amp_error": runs.get("amp_error"),
           "rows": [{"name": "predict_to_folder", "device": str(device), "seconds": ours, "pixel_days_per_s": px / ours,
                     "seconds_rounds": [round(t, 3) for t in runs["ours"]]},
                    {"name": "io_floor", "device": "cpu", "seconds": floor, "pixel_days_per_s": px / floor,
                     "seconds_rounds": [round(t, 3) for t in runs["floor"]]}],
           "ratios": [{"comparison": "e2e/floor", "what": "predict_to_folder time / I/O floor time (1.0 = at the floor)",
                       "ratio": ours / floor, "target": None, "verdict": ""}]}
    r = res["ratios"][0]
    r["target"], r["verdict"] = verdict("e2e", "e2e/floor", device.type, r["ratio"])
    r["at_most"] = ("e2e", "e2e/floor", device.type) in AT_MOST
    return res


# ----------------------------------------------------------------------------- ensembles

def bench_chunked(S, device, args):
    """Issue 15: training from a Zarr cube 4x larger than an RLIMIT_AS cap (benchmarks/chunked.py, subprocesses;
    CPU only, small sizes unless --full). Part of --only chunked, not of the default parts (it writes GBs)."""
    import chunked as _chunked
    out = os.path.join(os.path.dirname(os.path.abspath(args.out)), "chunked.json")
    rc = _chunked.main((["--full"] if args.full else []) + ["--out", out])
    with open(out) as fh:
        res = json.load(fh)
    return {"ratios": res.get("ratios"), "checks": res.get("checks"), "big_over_cap": res.get("big_over_cap"),
            "json": out, "rc": rc}


def bench_dask(S, device, args):
    """Issue 15: predict on a local Dask cluster with 1 and 2 workers (benchmarks/dask_predict.py; CPU, small sizes
    unless --full). Part of --only dask, not of the default parts (it starts clusters)."""
    import dask_predict as _dask_predict
    out = os.path.join(os.path.dirname(os.path.abspath(args.out)), "dask_predict.json")
    rc = _dask_predict.main((["--sizes", "128,256", "--days", "32"] if args.full else []) + ["--out", out])
    with open(out) as fh:
        res = json.load(fh)
    return {"ratio_2_over_1": {k: v.get("ratio_2_over_1") for k, v in res["sizes"].items()},
            "rss_ratio_largest_over_smallest": res.get("rss_ratio_largest_over_smallest"), "json": out, "rc": rc}


def bench_ensemble(S, device, args):
    """One training step of N stacked members against N single steps (same batch, same settings)."""
    from ismoe_qgis.model.networks import build_model
    cfg = S["ensemble"]
    k, L = 7, 14
    cube = make_cube(DEMO_FACTORS, cfg["T"], cfg["H"], cfg["W"], cfg["targets"], k, L, seed=5)
    sampler = WindowSampler(cube, device)
    mask = cube.sample_mask(np.ones(cube.n_dates, bool))
    t_idx, n_idx = np.nonzero(mask)
    tc = TrainConfig()
    rows, ratios = [], []
    for batch in cfg["batches"]:
        rng = np.random.default_rng(0)
        sel = rng.choice(len(t_idx), batch)
        xb, yb, db = sampler.batch(t_idx[sel], n_idx[sel])
        models = {}
        for n in [1] + list(cfg["members"]):
            mc = model_config_for(cube, "ismoe", conv_channels=CONV_CHANNELS, hidden=HIDDEN,
                                  router_hidden=ROUTER_HIDDEN, members=n)
            m = build_model(mc, 0).to(device).train()
            models[n] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3))

        def step(n):
            m, opt = models[n]
            loss, _ = loss_terms(m, xb, yb, db, tc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for n in models:
            step(n)                                              # warm-up
        times = {n: [] for n in models}
        for _ in range(cfg["rounds"]):
            for n in models:
                sync(device)
                t0 = time.perf_counter()
                for _ in range(cfg["steps"]):
                    step(n)
                sync(device)
                times[n].append((time.perf_counter() - t0) / cfg["steps"])
        single = median(times[1])
        for n, ts in times.items():
            rows.append({"name": f"train step, {n} member{'s' if n > 1 else ''}, batch {batch}", "device": str(device),
                         "members": n, "batch": batch, "step_ms": 1000 * median(ts),
                         "step_ms_rounds": [round(1000 * t, 1) for t in ts]})
            if n > 1:
                rv = n * single / median(ts)
                tgt, v = verdict("ensemble", "N*single/ensemble train", device.type, rv)
                ratios.append({"comparison": "N*single/ensemble train", "ratio": rv, "target": tgt, "verdict": v,
                               "what": f"{n} x single step / {n}-member step, batch {batch} (ensemble step = "
                                       f"{median(ts) / single:.2f} single steps = {median(ts) / single / n:.2f} N)"})
        log(f"  batch {batch}: " + ", ".join(f"N={n} {1000 * median(v):.0f} ms" for n, v in times.items()))
    # prediction: one tile, N members against one
    tile, T = cfg["tile"], cfg["days"]
    r = k // 2
    pc = make_cube(DEMO_FACTORS, T + L - 1, tile + 2 * r, tile + 2 * r, 4, k, L, seed=6)
    xt = inference.normalise_block(models[1][0], pc.x).to(device)
    doy = torch.from_numpy(inference.day_of_year(pc.dates[L - 1:])).to(device)
    ptimes = {}
    for n, (m, _) in models.items():
        m.eval()
        inference.predict_tile(m, xt, doy)
        ts = []
        for _ in range(2):
            sync(device)
            t0 = time.perf_counter()
            inference.predict_tile(m, xt, doy, members=n > 1)
            sync(device)
            ts.append(time.perf_counter() - t0)
        ptimes[n] = median(ts)
        rows.append({"name": f"predict_tile, {n} member{'s' if n > 1 else ''}", "device": str(device), "members": n,
                     "seconds": ptimes[n], "pixel_days_per_s": tile * tile * T / ptimes[n]})
        if n > 1:
            ratios.append({"comparison": "N*single/ensemble predict", "ratio": n * ptimes[1] / ptimes[n], "target": None,
                           "verdict": "", "what": f"{n} x single tile prediction / {n}-member tile prediction"})
    log("  predict_tile: " + ", ".join(f"N={n} {v:.2f}s" for n, v in ptimes.items()))
    return {"sizes": {"cube": [cfg["T"], cfg["H"], cfg["W"]], "experts": len(DEMO_FACTORS), "tile": [tile, tile, T]},
            "rows": rows, "ratios": ratios}


# ----------------------------------------------------------------------------- memory modes

def bench_memory(S, device, args):
    """MEMORY=stateful against MEMORY=window at L = 14, the same experts (weights copied)."""
    cfg = S["memory"]
    k, L, tile, T = 7, 14, cfg["tile"], cfg["days"]
    r = k // 2
    cube = make_cube(DEMO_FACTORS, T + L - 1, tile + 2 * r, tile + 2 * r, 64, k, L, seed=3)
    models = {}
    for mem in ("window", "stateful"):
        torch.manual_seed(0)
        mc = model_config_for(cube, "ismoe", conv_channels=CONV_CHANNELS, hidden=HIDDEN, router_hidden=ROUTER_HIDDEN,
                              memory=mem)          # streaming cost per output day: no warm-up days
        models[mem] = SoilMoistureNet(mc).to(device).eval()
    models["stateful"].load_state_dict(models["window"].state_dict())
    xt = inference.normalise_block(models["window"], cube.x).to(device)
    doy = torch.from_numpy(inference.day_of_year(cube.dates[L - 1:])).to(device)
    P = tile * tile
    jobs = {mem: (lambda m=m: inference.predict_tile(m, xt, doy)) for mem, m in models.items()}
    for fn in jobs.values():
        fn()                                                     # warm-up
    times = {n: [] for n in jobs}
    for _ in range(cfg["rounds"]):
        for n, fn in jobs.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    rows = [{"name": f"predict_tile {n}", "device": str(device), "pixel_days": P * T, "seconds": median(ts),
             "pixel_days_per_s": P * T / median(ts), "seconds_rounds": [round(t, 4) for t in ts]}
            for n, ts in times.items()]
    log("  predict_tile: " + ", ".join(f"{n} {median(v):.3f}s" for n, v in times.items()))
    ratios = []

    def add_ratio(comp, what, value):
        tgt, v = verdict("memory", comp, device.type, value)
        ratios.append({"comparison": comp, "what": what, "ratio": value, "target": tgt, "verdict": v})
    add_ratio("stateful/window predict_tile", f"streaming vs windowed (L={L}) pixel-days/s, one tile",
              median(times["window"]) / median(times["stateful"]))

    # end to end on GeoTIFFs
    size, Te = cfg["e2e_size"], cfg["e2e_days"]
    tmp = tempfile.mkdtemp(prefix="ismoe_bench_memory_", dir=args.tmpdir)
    try:
        paths, _, grid = write_inputs(tmp, DEMO_FACTORS, size, Te + L - 1)
        dates = np.datetime64("2019-01-01") + np.arange(Te + L - 1)
        reader = RasterioBlockReader(paths)
        e2e = {n: [] for n in models}
        try:
            for i in range(2):
                for n, m in models.items():
                    d = os.path.join(tmp, f"{n}{i}")
                    t0 = time.perf_counter()
                    inference.predict_to_folder(m, reader, grid, dates, d, tile_size=128, time_chunk=64, device=device)
                    sync(device)
                    e2e[n].append(time.perf_counter() - t0)
                    shutil.rmtree(d, ignore_errors=True)
        finally:
            reader.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for n, ts in e2e.items():
        rows.append({"name": f"predict_to_folder {n}", "device": str(device), "pixel_days": size * size * Te,
                     "seconds": median(ts), "pixel_days_per_s": size * size * Te / median(ts),
                     "seconds_rounds": [round(t, 3) for t in ts]})
    log("  predict_to_folder: " + ", ".join(f"{n} {median(v):.2f}s" for n, v in e2e.items()))
    add_ratio("stateful/window e2e", f"predict_to_folder {size}x{size} x {Te} days, windowed time / stateful time",
              median(e2e["window"]) / median(e2e["stateful"]))

    # training: supervised days per second
    tcube = make_cube(DEMO_FACTORS, 365 + 64 + L, 24, 24, 300, k, L, seed=4)
    tr_rows = {}
    for mem, (spin, n_sup, batch) in {"window": (0, 1, 256), "stateful": (365, 32, 256)}.items():
        torch.manual_seed(0)
        mc = model_config_for(tcube, "ismoe", conv_channels=CONV_CHANNELS, hidden=HIDDEN,
                              router_hidden=ROUTER_HIDDEN, memory=mem, spin_up=spin)
        model = SoilMoistureNet(mc).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sampler = WindowSampler(tcube, device, pad_days=mc.context_days - (L - 1))
        tc = TrainConfig()
        mask = tcube.sample_mask(np.ones(tcube.n_dates, bool))
        t_idx, n_idx = np.nonzero(mask)
        rng = np.random.default_rng(0)
        G = batch // n_sup

        def step():
            end, loc, valid = draw_runs(rng, mask, t_idx, n_idx, G, n_sup, L)
            xb, yb, db = sampler.batch(end, loc, n_sup, mc.context_days)
            loss, _ = loss_terms(model, xb, yb, db, tc, torch.from_numpy(valid).to(yb.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step()
        sync(device)
        ts = []
        for _ in range(cfg["train_steps"]):
            t0 = time.perf_counter()
            step()
            sync(device)
            ts.append(time.perf_counter() - t0)
        tr_rows[mem] = median(ts)
        rows.append({"name": f"train step {mem}", "device": str(device), "supervised_days": G * n_sup,
                     "seconds": median(ts), "supervised_days_per_s": G * n_sup / median(ts),
                     "note": f"{G} sequences of {spin} spin-up + {n_sup} days" if mem == "stateful"
                     else f"{G} windows of {L} days",
                     "seconds_rounds": [round(t, 4) for t in ts]})
    log("  train step: " + ", ".join(f"{n} {v * 1000:.0f} ms" for n, v in tr_rows.items()))
    add_ratio("stateful/window train", "supervised days/s, stateful vs windowed (same batch of 256 supervised days)",
              tr_rows["window"] / tr_rows["stateful"])
    return {"sizes": {"tile": [tile, tile], "days": T, "seq_len": L, "patch": k, "experts": len(DEMO_FACTORS),
                      "e2e": [size, size, Te]}, "rows": rows, "ratios": ratios}


# ----------------------------------------------------------------------------- scaling

def bench_scaling(S, device, args):
    cfg = S["scaling"]
    dcfg = cfg["cuda" if device.type == "cuda" else "cpu"]
    B = cfg["batch"]
    configs = []
    for E in (1, 3, 6, 9):
        configs.append(("experts", E, synthetic_factors(E), 7, 14))
    for k in (3, 7, 11):
        configs.append(("patch", k, DEMO_FACTORS, k, 14))
    for L in (7, 14, 30):
        configs.append(("seq_len", L, DEMO_FACTORS, 7, L))
    rows = []
    for axis, value, factors, k, L in configs:
        T = max(cfg["T"], L + 16)
        cube = make_cube(factors, T, cfg["H"], cfg["W"], cfg["targets"], k, L, seed=3)
        trainers = {"ours": OursTrainer(cube, device), "naive": NaiveTrainer(cube, device)}
        times, errors = time_trainers(trainers, cube, B, {n: device for n in trainers},
                                      dcfg["warmup"], dcfg["rounds"], dcfg["steps"])
        # tile prediction
        tile, Tp, r = cfg["tile"], cfg["days"], k // 2
        pc = make_cube(factors, Tp + L - 1, tile + 2 * r, tile + 2 * r, 4, k, L, seed=4)
        model = make_model(pc, device).eval()
        xt = inference.normalise_block(model, pc.x).to(device)
        doy = torch.from_numpy(inference.day_of_year(pc.dates[L - 1:])).to(device)
        inference.predict_tile(model, xt, doy)
        pt = []
        for _ in range(max(2, dcfg["rounds"])):
            sync(device)
            t0 = time.perf_counter()
            inference.predict_tile(model, xt, doy)
            sync(device)
            pt.append(time.perf_counter() - t0)
        row = {"axis": axis, "value": value, "experts": len(factors), "variables": len(cube.variables),
               "patch": k, "seq_len": L,
               "train_step_ms": 1e3 * median(times["ours"]) if "ours" not in errors else None,
               "naive_train_step_ms": 1e3 * median(times["naive"]) if "naive" not in errors else None,
               "predict_ms": 1e3 * median(pt), "predict_pixel_days_per_s": tile * tile * Tp / median(pt)}
        row["train_ours_over_naive"] = ratio(row["naive_train_step_ms"] or float("nan"),
                                             row["train_step_ms"] or float("nan"))
        rows.append(row)
        log(f"  {axis}={value}: train {row['train_step_ms']:.0f} ms (naive {row['naive_train_step_ms']:.0f} ms), "
            f"predict {row['predict_ms']:.0f} ms")
    return {"sizes": {"batch": B, "train_cube": [cfg["T"], cfg["H"], cfg["W"]], "predict_tile": [cfg["tile"], cfg["tile"]],
                      "predict_days": cfg["days"],
                      "experts_axis": "E synthetic factors x 2 variables each; patch/seq_len axes use the demo's 6 factors"},
            "rows": rows}


# ----------------------------------------------------------------------------- report

def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return str(v)


def table(headers, rows):
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w[i]) for i, h in enumerate(headers))
    out = [line, "  ".join("-" * x for x in w)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    return "\n".join(out)


def ratio_rows(ratios):
    return [[r["what"], f"{fmt(r['ratio'], 2)}x",
             f"{'<=' if r.get('at_most') else '>='} {r['target']:g}x" if r["target"] else "-", r["verdict"] or "-"]
            for r in ratios]


def target_summary(results):
    """One table: every ratio that has a target for this device (and a row for a target not measured)."""
    dev = "cuda" if str(results["machine"]["device"]).startswith("cuda") else "cpu"
    rows, seen = [], set()
    for part, res in results["parts"].items():
        for r in res.get("ratios", []):
            if r.get("target"):
                seen.add((part, r["comparison"]))
                rows.append([part, r["what"], f"{fmt(r['ratio'], 2)}x",
                             f"{'<=' if r.get('at_most') else '>='} {r['target']:g}x", r["verdict"]])
    for (part, comp, d), t in TARGETS.items():
        if d == dev and part in results["parts"] and (part, comp) not in seen:
            err = results["parts"][part].get("error")
            rows.append([part, comp, "-", f"{'<=' if (part, comp, d) in AT_MOST else '>='} {t:g}x",
                         f"NOT MEASURED{': ' + err[:80] if err else ''}"])
    m = results["machine"]
    head = (f"targets on {m['device']}" + (f" ({m['gpu']['name']})" if m.get("gpu") else "")
            + f", {results['size_preset']} sizes, {results['run_seconds']:.0f} s")
    return head + "\n" + table(["part", "comparison", "value", "target", "verdict"], rows)


def report(results):
    m = results["machine"]
    lines = [f"machine: {m['cpu_model']}, {m['cpus_available']} CPUs available ({m['logical_cpus']} logical), "
             f"torch {m['torch']} ({m['torch_threads']} threads: {m.get('torch_threads_reason', '')}), device {m['device']}"
             + (f", GPU {m['gpu']['name']}" if m.get("gpu") else ", no GPU")
             + f"; load average at start {results['loadavg_start']}, end {results.get('loadavg_end')}"
             + f"; malloc regime {m.get('malloc', {}).get('regime', '?')}"]
    P = results["parts"]
    if "train" in P:
        t = P["train"]
        if "error" in t:
            lines += ["", f"[1] training: ERROR {t['error']}"]
        else:
            s = t["sizes"]
            lines += ["", f"[1] training throughput (E={s['experts']}, k={s['patch']}, L={s['seq_len']}, "
                          f"hidden={s['hidden']}, batch={s['batch']}; fwd+bwd+AdamW step)"]
            rc = t["reference_check"]
            lines.append(f"reference check: same windows {rc['same_windows']}, max |y diff| {rc['max_abs_diff_y']:.1e}, "
                         f"max |weight diff| {rc['max_abs_diff_weights']:.1e}"
                         + ("" if rc["ok"] else "  -> REFERENCE MISMATCH: naive.py no longer follows networks.py"))
            lines.append(table(["impl", "device", "dtype", "step ms", "samples/s", "rounds (ms/step)"],
                               [[r["name"], r["device"], r["dtype"], fmt(r.get("step_ms")), fmt(r.get("samples_per_s")),
                                 r.get("error") or " ".join(fmt(x, 0) for x in r["step_ms_rounds"])] for r in t["rows"]]))
            lines.append(table(["ratio", "value", "target", "verdict"], ratio_rows(t["ratios"])))
    if "predict" in P:
        t = P["predict"]
        if "error" in t:
            lines += ["", f"[2] prediction: ERROR {t['error']}"]
        else:
            s = t["sizes"]
            lines += ["", f"[2] prediction throughput (tile {s['tile'][0]}x{s['tile'][1]} x {s['days']} days, "
                          f"patches: {s['naive_pixel_days']} pixel-days in batches of {s['patch_batch']}; "
                          f"tile vs naive max |diff| {t['reference_check']['max_abs_diff_tile_vs_naive_patch']:.1e})"]
            lines.append(table(["impl", "dtype", "pixel-days", "seconds", "pixel-days/s"],
                               [[r["name"], r["dtype"], r.get("pixel_days", "-"), fmt(r.get("seconds"), 3),
                                 fmt(r.get("pixel_days_per_s")) if "error" not in r else "ERROR " + r["error"][:120]]
                                for r in t["rows"]]))
            if not t["reference_check"]["ok"]:
                lines.append("REFERENCE MISMATCH: tile prediction and the naive model disagree (see naive.py)")
            lines.append(table(["ratio", "value", "target", "verdict"], ratio_rows(t["ratios"])))
    if "e2e" in P:
        t = P["e2e"]
        if "error" in t:
            lines += ["", f"[3] end-to-end: ERROR {t['error']}"]
        else:
            s = t["sizes"]
            lines += ["", f"[3] end-to-end predict_to_folder, {s['grid'][0]}x{s['grid'][1]} grid, {s['variables']} input "
                          f"GeoTIFFs x {s['input_dates']} dates -> {s['output_files']} outputs x {s['output_dates']} dates "
                          f"(tile {s['tile_size']}, time chunk {s['time_chunk']}, {s['amp']})"]
            if t.get("amp_error"):
                lines.append(f"autocast prediction FAILED ({t['amp_error'][:160]}); the row below is fp32")
            lines.append(table(["run", "device", "seconds", "pixel-days/s", "rounds (s)"],
                               [[r["name"], r["device"], fmt(r["seconds"], 2), fmt(r["pixel_days_per_s"]),
                                 " ".join(fmt(x, 2) for x in r["seconds_rounds"])] for r in t["rows"]]))
            lines.append(table(["ratio", "value", "target", "verdict"], ratio_rows(t["ratios"])))
    if "scaling" in P:
        t = P["scaling"]
        if "error" in t:
            lines += ["", f"[4] scaling: ERROR {t['error']}"]
        else:
            s = t["sizes"]
            lines += ["", f"[4] scaling (batch {s['batch']}; predict tile {s['predict_tile'][0]}x{s['predict_tile'][1]} x "
                          f"{s['predict_days']} days; {s['experts_axis']})"]
            lines.append(table(["axis", "value", "E", "V", "k", "L", "train ms/step", "naive ms/step", "ours/naive",
                                "predict ms", "pixel-days/s"],
                               [[r["axis"], r["value"], r["experts"], r["variables"], r["patch"], r["seq_len"],
                                 fmt(r["train_step_ms"]), fmt(r["naive_train_step_ms"]),
                                 f"{fmt(r['train_ours_over_naive'], 2)}x", fmt(r["predict_ms"]),
                                 fmt(r["predict_pixel_days_per_s"])] for r in t["rows"]]))
    if "ensemble" in P:
        t = P["ensemble"]
        if "error" in t:
            lines += ["", f"[6] ensembles: ERROR {t['error']}"]
        else:
            lines += ["", f"[6] ENSEMBLE: N members stacked on the experts' axis vs one model "
                          f"(E={t['sizes']['experts']}, train()'s settings; tile {t['sizes']['tile']})"]
            lines.append(table(["run", "device", "step ms", "seconds", "pixel-days/s"],
                               [[r["name"], r["device"], fmt(r.get("step_ms")), fmt(r.get("seconds"), 3),
                                 fmt(r.get("pixel_days_per_s"))] for r in t["rows"]]))
            lines.append(table(["ratio", "value", "target", "verdict"], ratio_rows(t["ratios"])))
    if "memory" in P:
        t = P["memory"]
        if "error" in t:
            lines += ["", f"[5] memory modes: ERROR {t['error']}"]
        else:
            s = t["sizes"]
            lines += ["", f"[5] MEMORY=stateful vs window (L={s['seq_len']}; tile {s['tile'][0]}x{s['tile'][1]} x "
                          f"{s['days']} days; end to end {s['e2e'][0]}x{s['e2e'][1]} x {s['e2e'][2]} days)"]
            lines.append(table(["run", "device", "seconds", "pixel-days/s", "supervised days/s", "note"],
                               [[r["name"], r["device"], fmt(r["seconds"], 3), fmt(r.get("pixel_days_per_s")),
                                 fmt(r.get("supervised_days_per_s")), r.get("note", "")] for r in t["rows"]]))
            lines.append(table(["ratio", "value", "target", "verdict"], ratio_rows(t["ratios"])))
    lines += ["", f"total run time {results['run_seconds']:.0f}s"]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="issue sizes (1024x1024 end-to-end, bigger cube, more steps)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "performance.json"))
    ap.add_argument("--only", default="train,predict,e2e,scaling,memory,ensemble", help="comma list of parts")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default: the CPUs available, or 1 when the load average already "
                         "fills them: OpenMP threads that wait on each other under contention are far slower)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd training (ours)")
    ap.add_argument("--tmpdir", default=None, help="where the end-to-end GeoTIFFs go (default: system temp)")
    ap.add_argument("--malloc", choices=("keep", "default"), default="keep",
                    help="C allocator regime: keep freed memory (steady state, no page faults; default) or "
                         "glibc's defaults (timings then depend on what ran before, see set_malloc)")
    ap.add_argument("--cpu-chunk-windows", type=int, default=1024,
                    help="on the CPU, also time predict_tile with this chunk_windows (tuning row; 0 = off)")
    ap.add_argument("--gpu-check", action="store_true",
                    help="make gpu-check: --device cuda, parts " + ",".join(GPU_CHECK_PARTS) + ", the 'gpu' sizes "
                         "(minutes on one H100/H200); prints one table of the GPU targets (the full report goes "
                         "beside the JSON, .txt); without a CUDA device: says so, writes nothing, exit status 0")
    args = ap.parse_args(argv)
    if args.gpu_check:
        if not torch.cuda.is_available():
            print(f"gpu-check: no CUDA device visible to torch {torch.__version__} (CUDA build: "
                  f"{torch.version.cuda}): GPU benchmark skipped, {args.out} not written")
            return 0
        if args.device == "auto":
            args.device = "cuda"
        if args.only == ap.get_default("only"):
            args.only = ",".join(GPU_CHECK_PARTS)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    known = ("train", "predict", "e2e", "scaling", "memory", "ensemble", "chunked",   # chunked: issue 15, not default
             "dask")                                                                   # dask: issue 15, not default
    bad = [p for p in parts if p not in known]
    if bad:
        ap.error(f"unknown part(s) {bad}: choose from {', '.join(known)}")
    try:
        avail = len(os.sched_getaffinity(0))
    except AttributeError:
        avail = os.cpu_count() or 1
    malloc = set_malloc(args.malloc)
    la0 = loadavg()
    if args.threads:
        threads, why = args.threads, "--threads"
    elif la0 and avail > 1 and la0[0] >= avail - 0.5:
        threads, why = 1, f"load average {la0[0]} already fills the {avail} CPUs"
    else:
        threads, why = avail, "CPUs available"
    torch.set_num_threads(threads)
    device = resolve_device(args.device, log)
    preset = "gpu" if args.gpu_check else "full" if args.full else "small"
    S = SIZES[preset]
    results = {"issue": 6, "created": _dt.datetime.now().isoformat(timespec="seconds"),
               "size_preset": preset, "argv": sys.argv[1:],
               "machine": {**describe_machine(device, threads), "torch_threads_reason": why, "malloc": malloc},
               "loadavg_start": la0, "parts": {},
               "targets": {f"{p}:{c}:{d}": v for (p, c, d), v in TARGETS.items()}}
    la = results["loadavg_start"]
    if la and la[0] > avail + 0.5:
        log(f"WARNING: load average {la[0]} exceeds the {avail} CPUs available: other processes compete for the "
            "CPU and timings are noisy (both sides of each ratio are interleaved, so ratios suffer less)")
    log(f"ismoe_qgis benchmarks ({results['size_preset']} sizes) on {device}, torch {torch.__version__}, "
        f"{threads} threads ({why})")
    t_all = time.perf_counter()
    fns = {"train": bench_train, "predict": bench_predict, "e2e": bench_e2e, "scaling": bench_scaling,
           "memory": bench_memory, "ensemble": bench_ensemble, "chunked": bench_chunked, "dask": bench_dask}
    for p in parts:
        log(f"[{p}] ...")
        t0 = time.perf_counter()
        try:
            results["parts"][p] = fns[p](S, device, args)
        except Exception as e:
            import traceback
            traceback.print_exc()
            results["parts"][p] = {"error": f"{type(e).__name__}: {e}"}
        results["parts"][p]["part_seconds"] = round(time.perf_counter() - t0, 1)
        log(f"[{p}] done in {results['parts'][p]['part_seconds']}s")
    results["run_seconds"] = time.perf_counter() - t_all
    results["loadavg_end"] = loadavg()
    text = report(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.gpu_check:         # one table; the per-part report beside the JSON
        txt = os.path.splitext(args.out)[0] + ".txt"
        with open(txt, "w") as f:
            f.write(text + "\n\n" + target_summary(results) + "\n")
        print()
        print(target_summary(results))
        print(f"\nper-part report: {txt}")
    else:
        print()
        print(text)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"\nwrote {args.out}")
    # FAIL verdicts are results, not errors: the exit status only says whether every part ran
    return 1 if any(p.get("error") for p in results["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

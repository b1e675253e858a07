#!/usr/bin/env python
"""Training from a Zarr cube larger than memory (issue 15 item 2): the chunk-wise sampler under a memory cap.

    .venv/bin/python benchmarks/chunked.py [--full] [--cap-mib 1280] [--epochs 1] [--samples 2048]
        [--tmpdir DIR] [--keep] [--out out/bench/chunked.json]

1. Writes a synthetic Zarr cube (6 variables, 365 days, station targets at 256 pixels) at least 4x larger than the
   memory cap, block by block (zarrcube.ZarrCubeWriter; never whole in memory), and a small one that fits.
2. Trains ``ismoe_qgis.model.train.train`` on the big cube in a subprocess whose address space is capped with
   ``resource.setrlimit(RLIMIT_AS, cap)`` (the cap covers everything: Python, torch, the sampler's blocks):
   CUBE_IN_MEMORY=auto must pick the chunk-wise sampler and train. A second capped run forces the in-memory path and
   is expected to fail for lack of memory (the reference that the cap binds).
3. Trains on the small cube with CUBE_IN_MEMORY=memory and =chunked (no cap; the same seed, data and model), and
   reports samples/s of both and their ratio (train() wall time: setup, epochs, validation and test included).

Each training runs in a fresh subprocess (1 torch thread, MALLOC_ARENA_MAX=2). Results (ratios, the load average
before and after) go to out/bench/chunked.json. The default sizes are the small ones; timings on a shared machine
are indicative.
"""
import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FACTORS = {"snow": ["sd", "sc"], "radiation": ["ssr", "str"], "wind": ["u10", "v10"]}
VARIABLES = [v for vs in FACTORS.values() for v in vs]
DAYS = 365
N_TARGETS = 256
# the cap covers torch too: a training process peaks at ~0.9-1.0 GiB of address space before any cube
SIZES = {"small": {"cap_mib": 1280, "fit_px": 128}, "full": {"cap_mib": 3072, "fit_px": 256}}


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------ cube writing
def write_cube(path, size, seed=0, chunks=None, block_bytes=128 << 20):
    """A synthetic cube (V, 365, size, size) written block by block: seasonal fields plus noise, station targets
    driven by the first variable at their pixels."""
    import numpy as np
    from ismoe_qgis.data import zarrcube
    from ismoe_qgis.data.prepare import _Moments
    rng = np.random.default_rng(seed)
    V, T, H, W = len(VARIABLES), DAYS, size, size
    dates = np.datetime64("2019-01-01") + np.arange(T)
    pix = rng.choice(H * W, N_TARGETS, replace=False)
    rows, cols = (pix // W).astype(np.int32), (pix % W).astype(np.int32)
    grid = {"crs_wkt": 'LOCAL_CS["synthetic",UNIT["metre",1]]', "transform": [0.0, 1000.0, 0.0, 0.0, 0.0, -1000.0],
            "width": W, "height": H}
    pool = rng.standard_normal(1 << 22).astype(np.float32)
    season = np.sin(2 * np.pi * np.arange(T) / 365.0).astype(np.float32)
    scale = np.array([1, 2, 30, 40, 5, 5], np.float32)[:V]
    moments = [_Moments() for _ in range(V)]
    ym = _Moments()
    t0w = time.perf_counter()
    with zarrcube.ZarrCubeWriter(path, VARIABLES, dates, grid, rows, cols, chunks) as w:
        for t0, t1, r0, r1, c0, c1 in zarrcube.iter_blocks((V, T, H, W), w.chunks, block_bytes):
            shape = (V, t1 - t0, r1 - r0, c1 - c0)
            n = int(np.prod(shape))
            off = int(rng.integers(0, max(1, pool.size - n)))
            noise = np.resize(pool[off:off + n], n).reshape(shape)
            block = noise * 0.3 + season[None, t0:t1, None, None]
            block *= scale[:, None, None, None]
            for v in range(V):
                moments[v].add(block[v])
            w.write_data(t0, r0, c0, block)
            inside = np.nonzero((rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1))[0]
            if len(inside):
                xv = block[:, :, rows[inside] - r0, cols[inside] - c0]
                yb = (0.25 + 0.05 * xv[0] + 0.01 * xv[4]).astype(np.float32)
                ym.add(yb)
                w.write_targets(t0, inside, yb, np.isfinite(xv).all(axis=0))
        stats = [m.mean_std() for m in moments]
        y_mean, y_std = ym.mean_std()
        w.finish({"factors": FACTORS, "variables": VARIABLES, "grid": grid, "x_mean": [m for m, _ in stats],
                  "x_std": [s for _, s in stats], "y_mean": y_mean, "y_std": y_std, "patch_size": 7, "seq_len": 14,
                  "target_kind": "stations", "station_ids": [f"s{i}" for i in range(N_TARGETS)], "version": "bench"})
    return {"path": path, "shape": [V, T, H, W], "bytes": V * T * H * W * 4, "chunks": list(w.chunks),
            "store_bytes": zarrcube.store_bytes(path), "write_seconds": round(time.perf_counter() - t0w, 1)}


# ------------------------------------------------------------------------------------------ child
def child(spec):
    """One training run (in a fresh process): spec {cube, mode, cap_bytes, epochs, samples, seed}."""
    import resource
    if spec.get("cap_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (int(spec["cap_bytes"]), resource.getrlimit(resource.RLIMIT_AS)[1]))
    out = {"mode": spec["mode"], "cap_mib": round(spec["cap_bytes"] / 2 ** 20) if spec.get("cap_bytes") else None}
    logs = []
    try:
        import torch
        torch.set_num_threads(1)
        from ismoe_qgis.core_callbacks import Callbacks
        from ismoe_qgis.data.cube import Cube
        from ismoe_qgis.model.train import TrainConfig, train
        cube = Cube.load(spec["cube"])
        cfg = TrainConfig(epochs=spec["epochs"], samples_per_epoch=spec["samples"], val_samples=512, batch_size=64,
                          seed=spec["seed"], threads=1, cube_in_memory=spec["mode"], patience=100)
        t0 = time.perf_counter()
        res = train(cube, os.path.join(spec["tmp"], f"model_{spec['tag']}.pt"), "ismoe", cfg,
                    dict(conv_channels=8, hidden=16), Callbacks(log=logs.append))
        wall = time.perf_counter() - t0
        n = spec["epochs"] * min(spec["samples"], res["split"]["n_train"])
        out.update(ok=True, train_seconds=round(wall, 2), train_samples=n, samples_per_s=round(n / wall, 1),
                   val_cc=res.get("val_cc"), sampler=[m for m in logs if m.startswith("window sampler:")])
    except (MemoryError, RuntimeError, OSError) as e:
        out.update(ok=False, error=f"{type(e).__name__}: {str(e)[:200]}",
                   sampler=[m for m in logs if m.startswith("window sampler:")])
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mib"] = round(ru.ru_maxrss / 1024, 1)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmPeak:"):
                    out["vm_peak_mib"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    print("RESULT " + json.dumps(out))


def run_child(spec, timeout=1800):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"mode": spec["mode"], "ok": False, "error": f"exit {p.returncode}: {(p.stderr or '')[-400:]}"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the larger sizes (cap 3 GiB, a cube of about 13 GiB)")
    ap.add_argument("--cap-mib", type=int, default=None, help="the address-space cap of the capped runs")
    ap.add_argument("--factor", type=float, default=4.2, help="big cube bytes / cap (at least 4)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--samples", type=int, default=2048, help="training windows per epoch")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the cubes")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "chunked.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    preset = "full" if args.full else "small"
    S = dict(SIZES[preset])
    cap = (args.cap_mib or S["cap_mib"]) << 20
    if args.factor < 4:
        ap.error("--factor must be at least 4 (the issue: a cube at least 4x larger than the memory cap)")
    big_px = int((args.factor * cap / (len(VARIABLES) * DAYS * 4)) ** 0.5) + 1
    tmp = tempfile.mkdtemp(prefix="ismoe_chunked_", dir=args.tmpdir)
    la0 = loadavg()
    print(f"chunked-cube benchmark ({preset}): cap {cap >> 20} MiB, big cube {len(VARIABLES)} x {DAYS} x {big_px} x "
          f"{big_px}; load average {la0} (timings indicative on a shared machine)", flush=True)
    results = {"issue": 15, "created": _dt.datetime.now().isoformat(timespec="seconds"), "preset": preset,
               "argv": sys.argv[1:], "loadavg_start": la0, "cpus": os.cpu_count()}
    try:
        results["big_cube"] = write_cube(os.path.join(tmp, "big.zarr"), big_px, seed=0)
        results["fit_cube"] = write_cube(os.path.join(tmp, "fit.zarr"), S["fit_px"], seed=1)
        b = results["big_cube"]
        results["big_over_cap"] = round(b["bytes"] / cap, 2)
        print(f"big cube {b['bytes'] / 2 ** 30:.2f} GiB = {results['big_over_cap']}x the cap, written in "
              f"{b['write_seconds']} s", flush=True)
        base = {"epochs": args.epochs, "samples": args.samples, "seed": args.seed, "tmp": tmp}
        runs = {}
        runs["big_auto_capped"] = run_child(dict(base, cube=b["path"], mode="auto", cap_bytes=cap, tag="big"))
        print("capped auto:", runs["big_auto_capped"], flush=True)
        runs["big_memory_capped"] = run_child(dict(base, cube=b["path"], mode="memory", cap_bytes=cap, tag="bigm"))
        print("capped memory (expected to fail):", runs["big_memory_capped"], flush=True)
        f = results["fit_cube"]["path"]
        runs["fit_memory"] = run_child(dict(base, cube=f, mode="memory", tag="fm"))
        runs["fit_chunked"] = run_child(dict(base, cube=f, mode="chunked", tag="fc"))
        results["runs"] = runs
        fm, fc, bc = runs["fit_memory"], runs["fit_chunked"], runs["big_auto_capped"]
        ratios = {}
        if fm.get("ok") and fc.get("ok"):
            ratios["fit_chunked_over_memory"] = round(fc["samples_per_s"] / fm["samples_per_s"], 3)
        if bc.get("ok") and fm.get("ok"):
            ratios["big_capped_chunked_over_fit_memory"] = round(bc["samples_per_s"] / fm["samples_per_s"], 3)
        results["ratios"] = ratios
        results["checks"] = {
            "big_cube_at_least_4x_cap": results["big_over_cap"] >= 4,
            "capped_auto_trained_chunk_wise": bool(bc.get("ok")) and any("chunk-wise" in m
                                                                         for m in bc.get("sampler", [])),
            "capped_in_memory_failed": not runs["big_memory_capped"].get("ok"),
        }
    finally:
        results["loadavg_end"] = loadavg()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            results["tmpdir"] = tmp
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"\n{'run':<20} {'ok':<5} {'samples/s':>10} {'peak RSS MiB':>13} {'VmPeak MiB':>11}")
    for name, r in results.get("runs", {}).items():
        print(f"{name:<20} {str(r.get('ok')):<5} {r.get('samples_per_s', '-'):>10} {r.get('peak_rss_mib', '-'):>13} "
              f"{r.get('vm_peak_mib', '-'):>11}")
    print(f"ratios: {results.get('ratios')}; checks: {results.get('checks')}; load average {results['loadavg_start']}"
          f" -> {results['loadavg_end']} (indicative)")
    print(f"written {args.out}")
    return 0 if results.get("checks") and all(results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Peak memory of streamed prediction for two raster sizes with the same number of days (issue 4).

    .venv/bin/python benchmarks/memory.py [--small] [--sizes 512,2048] [--days 16] [--tile-size 128]
        [--device cpu] [--out out/bench/memory.json] [--tmpdir DIR] [--keep]

Writes two dated GeoTIFF factor layers per size (smooth fields + noise, one band per day, ISO band
descriptions, tiled + compressed) and a tiny random model (ModelConfig / SoilMoistureNet saved with
model.io.save_model: 2 factors, patch 3, 7 days, hidden 8), then runs
``ismoe_qgis.model.predict.predict_layers`` once per size, each in a FRESH subprocess, and reads
that process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; on Linux also
``VmHWM`` from /proc/self/status). The inputs and the model are written by another subprocess and
the parent imports nothing heavy: Linux keeps ru_maxrss across fork + exec, so a parent holding
torch/numpy would raise the children's floor.

Prediction streams tile by tile, so the peak must not grow with the raster: the issue's target is
peak(large) <= 1.5 x peak(small). Default sizes 512x512 and 2048x2048 (``--small``: 256 and 1024).
Also reported: the RSS after imports and model loading (the floor shared by both sizes), the
increment above it, and the run time. Results go to out/bench/memory.json.
"""
import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TARGET_RATIO = 1.5
SEQ_LEN, PATCH = 7, 3
VARIABLES = {"temperature": ["t2m"], "moisture": ["precip"]}


def rss_mib():
    """Peak RSS of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 1024)


def hwm_mib():
    """VmHWM (peak RSS of this process image, Linux only), MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- inputs
def write_layer(path, size, days, seed, block=256):
    """A size x size x days float32 GeoTIFF written block by block (little memory)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    res = 0.01
    prof = dict(driver="GTiff", width=size, height=size, count=days, dtype="float32", crs="EPSG:4326",
                transform=rasterio.Affine(res, 0, 10.0, 0, -res, 50.0), nodata=-9999.0, tiled=True,
                blockxsize=256, blockysize=256, compress="deflate", predictor=3, bigtiff="if_safer")
    dates = [str(np_date) for np_date in (np.datetime64("2019-01-01") + np.arange(days))]
    with rasterio.open(path, "w", **prof) as ds:
        for i, d in enumerate(dates, start=1):
            ds.set_band_description(i, d)
        for r0 in range(0, size, block):
            for c0 in range(0, size, block):
                h, w = min(block, size - r0), min(block, size - c0)
                yy, xx = np.mgrid[r0:r0 + h, c0:c0 + w].astype(np.float32) / 97.0
                for b in range(days):
                    field = np.sin(xx + 0.3 * b + seed) * np.cos(yy - 0.2 * b)
                    noise = rng.standard_normal((h, w)).astype(np.float32) * 0.05
                    ds.write((field + noise).astype(np.float32), b + 1, window=Window(c0, r0, w, h))


def write_model(path):
    import torch
    from ismoe_qgis.model.io import save_model
    from ismoe_qgis.model.networks import ModelConfig, SoilMoistureNet

    variables = [v for vs in VARIABLES.values() for v in vs]
    cfg = ModelConfig(factors=VARIABLES, variables=variables, patch_size=PATCH, seq_len=SEQ_LEN,
                      conv_channels=4, hidden=8, router_hidden=8, x_mean=[0.0] * len(variables),
                      x_std=[0.7] * len(variables), y_mean=0.25, y_std=0.05)
    torch.manual_seed(0)
    save_model(path, SoilMoistureNet(cfg).eval())


# ----------------------------------------------------------------------------- child
def child(args):
    """Runs in a fresh process: load, predict, report peak RSS as one JSON line."""
    import torch
    torch.set_num_threads(max(1, args.threads))
    from ismoe_qgis.core_callbacks import Callbacks
    from ismoe_qgis.model.io import load_model
    from ismoe_qgis.model.predict import predict_layers

    layers = json.loads(args.layers)
    load_model(args.model)                     # warm the same code paths as predict_layers
    floor = rss_mib()
    t0 = time.perf_counter()
    man = predict_layers(args.model, layers, args.pred, tile_size=args.tile_size, time_chunk=args.time_chunk,
                         device=args.device, callbacks=Callbacks(log=lambda m: None))
    seconds = time.perf_counter() - t0
    print(json.dumps({"floor_rss_mib": floor, "peak_rss_mib": rss_mib(), "vmhwm_mib": hwm_mib(),
                      "seconds": seconds, "output_dates": len(man["dates"]), "device": args.device}), flush=True)
    return 0


def setup(args):
    """Runs in its own process: the model (once) and the layers of one size."""
    if not os.path.exists(args.model):
        write_model(args.model)
    layers = json.loads(args.layers)
    for seed, path in enumerate(layers.values()):
        write_layer(path, args.size, args.days, seed)
    return 0


def run_sub(args, *extra):
    cmd = [sys.executable, os.path.abspath(__file__), *map(str, extra), "--tile-size", str(args.tile_size),
           "--time-chunk", str(args.time_chunk), "--device", args.device, "--threads", str(args.threads),
           "--days", str(args.days)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, extra[:3]))}: the subprocess failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="sizes 256 and 1024 instead of 512 and 2048")
    ap.add_argument("--sizes", default=None, help="two raster sizes (pixels per side), e.g. 512,2048")
    ap.add_argument("--days", type=int, default=16, help="days per layer (same for both sizes; default 16)")
    ap.add_argument("--tile-size", type=int, default=128)
    ap.add_argument("--time-chunk", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the measuring process (default: CPUs)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "memory.json"))
    ap.add_argument("--tmpdir", default=None, help="where the input/output rasters go (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the rasters")
    # internal: the measuring process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--pred", help=argparse.SUPPRESS)
    ap.add_argument("--layers", help=argparse.SUPPRESS)
    ap.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.threads:
        try:
            args.threads = len(os.sched_getaffinity(0))
        except AttributeError:
            args.threads = os.cpu_count() or 1
    if args.child:
        return child(args)
    if args.setup:
        return setup(args)

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([256, 1024] if args.small else [512, 2048])
    if len(sizes) != 2 or min(sizes) < 16:
        ap.error("--sizes needs two sizes >= 16, e.g. 512,2048")
    if args.days < SEQ_LEN:
        ap.error(f"--days must be >= {SEQ_LEN} (the model's sequence length)")
    work = tempfile.mkdtemp(prefix="ismoe_memory_", dir=args.tmpdir)
    results = {"issue": 4, "created": _dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
               "machine": {"python": platform.python_version(), "platform": platform.platform(),
                           "cpus": args.threads, "loadavg": list(os.getloadavg())},
               "settings": {"days": args.days, "seq_len": SEQ_LEN, "patch": PATCH, "variables": 2,
                            "tile_size": args.tile_size, "time_chunk": args.time_chunk, "device": args.device},
               "target_ratio": TARGET_RATIO, "runs": []}
    try:
        model = os.path.join(work, "tiny.pt")
        for size in sizes:
            t0 = time.perf_counter()
            layers = {v: os.path.join(work, f"{v}_{size}.tif") for vs in VARIABLES.values() for v in vs}
            run_sub(args, "--setup", "--size", size, "--model", model, "--layers", json.dumps(layers))
            t_write = time.perf_counter() - t0
            pred = os.path.join(work, f"pred_{size}")
            print(f"size {size}x{size}: inputs written in {t_write:.1f}s, predicting in a fresh process ...",
                  flush=True)
            out = run_sub(args, "--child", "--model", model, "--pred", pred, "--layers", json.dumps(layers))
            r = json.loads(out.strip().splitlines()[-1])
            r.update(size=size, pixels=size * size, input_mib=sum(os.path.getsize(p) for p in layers.values()) / 2 ** 20,
                     increment_mib=r["peak_rss_mib"] - r["floor_rss_mib"])
            results["runs"].append(r)
            print(f"  peak RSS {r['peak_rss_mib']:.0f} MiB (VmHWM {r['vmhwm_mib'] or float('nan'):.0f}; after imports + "
                  f"model {r['floor_rss_mib']:.0f} MiB, "
                  f"+{r['increment_mib']:.0f} MiB while predicting), {r['seconds']:.1f}s, "
                  f"{r['output_dates']} output dates", flush=True)
            if not args.keep:
                shutil.rmtree(pred, ignore_errors=True)
                for p in layers.values():
                    os.remove(p)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"rasters kept in {work}")
    small, large = results["runs"]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    results["ratio_peak"] = ratio
    results["ratio_increment"] = large["increment_mib"] / max(small["increment_mib"], 1e-9)
    results["verdict"] = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"\npeak RSS {large['size']}x{large['size']} / {small['size']}x{small['size']} = {large['peak_rss_mib']:.0f} / "
          f"{small['peak_rss_mib']:.0f} MiB = {ratio:.2f} (target <= {TARGET_RATIO}): {results['verdict']}; "
          f"pixels x{large['pixels'] / small['pixels']:.0f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Prediction on a local Dask cluster (issue 15 item 3): throughput with 1 and 2 workers, peak memory per worker.

    .venv/bin/python benchmarks/dask_predict.py [--sizes 64,128] [--days 16] [--tile 32] [--time-chunk 8]
        [--workers 1,2] [--out out/bench/dask_predict.json] [--keep]

For each raster size (square, pixels a side): writes the 11 demo variables as GeoTIFFs (random values, the demo's
factor set, a random model with the default sizes: patch 7, SEQ_LEN 14, 16 channels, hidden 64), predicts them
serially in this process (WORKERS=1: the reference output and throughput), then for each worker count starts a
fresh LocalCluster (processes, 1 thread and 1 torch thread each), imports torch on its workers, and predicts the
same layers through its scheduler address (predict_layers(scheduler=...): the tasks, the reads by path, the client's
writes). Reported: pixel-days/s (output pixels x output days / predict wall time, cluster start excluded and shown
apart), the ratio 2 workers / 1 worker, each worker's peak RSS (ru_maxrss, read on the worker after the run) per
size (flat in raster size: each worker holds a model and a few tiles), the largest difference to the serial output,
and the load average before and after. The 1.7x target holds only when each worker has its own idle core: on a
shared machine the numbers are indicative. JSON to --out (out/ is git-ignored).
"""
import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_inputs(folder, size, n_days, seed=3):
    import rasterio
    from rasterio.transform import from_origin

    from ismoe_qgis.data.demo import VARIABLES
    rng = np.random.default_rng(seed)
    dates = np.arange(np.datetime64("2019-01-01"), np.datetime64("2019-01-01") + n_days)
    layers = {}
    for v in VARIABLES:
        p = os.path.join(folder, f"{v}.tif")
        prof = dict(driver="GTiff", width=size, height=size, count=n_days, dtype="float32", crs="EPSG:32633",
                    transform=from_origin(500000.0, 4000000.0, 1000.0, 1000.0), nodata=-9999.0, tiled=True,
                    blockxsize=min(256, 16 * max(1, size // 16)), blockysize=min(256, 16 * max(1, size // 16)),
                    compress="deflate")
        with rasterio.open(p, "w", **prof) as ds:
            ds.write(rng.random((n_days, size, size), dtype=np.float32))
            for i, d in enumerate(dates, start=1):
                ds.set_band_description(i, str(d))
        layers[v] = p
    return layers


def make_model(path):
    import torch

    from ismoe_qgis.data.demo import FACTORS, VARIABLES
    from ismoe_qgis.model.io import save_model
    from ismoe_qgis.model.networks import ModelConfig, SoilMoistureNet
    cfg = ModelConfig(factors={f: list(vs) for f, vs in FACTORS.items()}, variables=list(VARIABLES),
                      x_mean=[0.5] * len(VARIABLES), x_std=[0.29] * len(VARIABLES), y_mean=0.25, y_std=0.05)
    torch.manual_seed(0)
    save_model(path, SoilMoistureNet(cfg).eval())
    return cfg


def _peak_rss_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _warm_worker():
    import torch  # noqa: F401

    import ismoe_qgis.model.inference  # noqa: F401
    import ismoe_qgis.model.parallel  # noqa: F401
    return True


def read_sm(folder):
    import rasterio
    with rasterio.open(os.path.join(folder, "sm.tif")) as ds:
        return ds.read()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,128", help="raster sizes (pixels a side), comma separated")
    ap.add_argument("--days", type=int, default=16, help="output days (inputs: SEQ_LEN - 1 more)")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--time-chunk", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "dask_predict.json"))
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from distributed import Client

    from ismoe_qgis.core_callbacks import Callbacks
    from ismoe_qgis.model.parallel import start_local_cluster
    from ismoe_qgis.model.predict import predict_layers
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    counts = [int(s) for s in args.workers.split(",") if s.strip()]
    tmp = tempfile.mkdtemp(prefix="ismoe_dask_bench_", dir=args.tmpdir)
    model = os.path.join(tmp, "model.pt")
    cfg = make_model(model)
    L = cfg.seq_len
    la0 = loadavg()
    log(f"dask predict benchmark: sizes {sizes}, {args.days} output days, tiles of {args.tile}, time chunks of "
        f"{args.time_chunk}, workers {counts}; CPUs {len(os.sched_getaffinity(0))}, load average {la0} "
        f"(indicative on a shared machine)")
    res = {"issue": 15, "part": "dask_predict", "created": _dt.datetime.now().isoformat(timespec="seconds"),
           "argv": sys.argv[1:] if argv is None else list(argv), "cpus": len(os.sched_getaffinity(0)),
           "loadavg_start": la0, "days": args.days, "tile": args.tile, "time_chunk": args.time_chunk,
           "model": {"patch_size": cfg.patch_size, "seq_len": L, "hidden": cfg.hidden, "factors": len(cfg.factors)},
           "sizes": {}}
    quiet = Callbacks(log=lambda _m: None)
    try:
        for size in sizes:
            d = os.path.join(tmp, f"s{size}")
            os.makedirs(d)
            layers = write_inputs(d, size, args.days + L - 1)
            pxd = size * size * args.days
            t0 = time.perf_counter()
            predict_layers(model, layers, os.path.join(d, "serial"), tile_size=args.tile, time_chunk=args.time_chunk,
                           device="cpu", threads=1, workers=1, callbacks=quiet)
            t_ser = time.perf_counter() - t0
            ref = read_sm(os.path.join(d, "serial"))
            row = {"pixel_days": pxd, "serial": {"seconds": round(t_ser, 2), "pixel_days_per_s": round(pxd / t_ser)},
                   "dask": {}}
            log(f"  {size} x {size}: serial {pxd / t_ser:,.0f} pixel-days/s ({t_ser:.1f} s)")
            for n in counts:
                t0 = time.perf_counter()
                cluster = start_local_cluster(n)      # what predict_layers(workers=n) starts
                client = Client(cluster, set_as_default=False)
                try:
                    client.run(_warm_worker)
                    t_start = time.perf_counter() - t0
                    out = os.path.join(d, f"dask{n}")
                    t0 = time.perf_counter()
                    predict_layers(model, layers, out, tile_size=args.tile, time_chunk=args.time_chunk, device="cpu",
                                   threads=1, scheduler=cluster.scheduler_address, callbacks=quiet)
                    t = time.perf_counter() - t0
                    rss = sorted(client.run(_peak_rss_mib).values())
                finally:
                    client.close()
                    cluster.close()
                diff = float(np.nanmax(np.abs(read_sm(out).astype(np.float64) - ref)))
                row["dask"][str(n)] = {"seconds": round(t, 2), "pixel_days_per_s": round(pxd / t),
                                       "cluster_start_s": round(t_start, 2),
                                       "peak_rss_mib_per_worker": [round(x, 1) for x in rss],
                                       "max_abs_diff_to_serial": diff}
                log(f"  {size} x {size}: {n} worker(s) {pxd / t:,.0f} pixel-days/s ({t:.1f} s; cluster start "
                    f"{t_start:.1f} s), peak RSS per worker {', '.join(f'{x:.0f}' for x in rss)} MiB, max |diff| to "
                    f"serial {diff:.2g}")
            if "1" in row["dask"] and "2" in row["dask"]:
                row["ratio_2_over_1"] = round(row["dask"]["2"]["pixel_days_per_s"] / row["dask"]["1"]["pixel_days_per_s"], 3)
                log(f"  {size} x {size}: 2 workers / 1 worker = {row['ratio_2_over_1']:.2f}x (target >= 1.7x with "
                    f"an idle core per worker)")
            res["sizes"][str(size)] = row
        if len(sizes) >= 2:
            a, b = res["sizes"][str(sizes[0])], res["sizes"][str(sizes[-1])]
            res["rss_ratio_largest_over_smallest"] = {
                n: round(max(b["dask"][n]["peak_rss_mib_per_worker"]) / max(a["dask"][n]["peak_rss_mib_per_worker"]), 3)
                for n in a["dask"] if n in b["dask"]}
            log(f"peak RSS per worker, {sizes[-1]} px / {sizes[0]} px ({(sizes[-1] / sizes[0]) ** 2:g}x the pixels): "
                f"{res['rss_ratio_largest_over_smallest']}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_end"] = loadavg()
    log(f"load average: start {la0}, end {res['loadavg_end']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

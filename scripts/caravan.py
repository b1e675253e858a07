#!/usr/bin/env python3
"""Real-data case: Caravan basins (ERA5-Land basin means) through the ISMoE Processing algorithms.

Each basin's daily table becomes 1x1-pixel GeoTIFF series at its gauge (ismoe_qgis.data.tables),
then the SAME algorithms as for gridded data run through Processing (processing.run in a
headless QgsApplication, or the qgis_process binary with --qgis-process):

    ismoe:preparedataset  PATCH_SIZE 1, SEQ_LEN 30, factors:
                            temperature   = temperature_2m_mean + dewpoint_temperature_2m_mean
                            radiation     = surface_net_solar_radiation_mean + surface_net_thermal_radiation_mean
                            wind          = u_component_of_wind_10m_mean + v_component_of_wind_10m_mean
                            precipitation = total_precipitation_sum + potential_evaporation_sum
                            snow          = snow_depth_water_equivalent_mean
                          target = volumetric_soil_water_layer_1_mean (ERA5-Land, 0-7 cm)
    ismoe:train           ismoe, cnn_lstm, mean_expert; the last TEST_YEARS years are the test period,
                          the VAL_YEARS before them validation (early stopping), the rest training
    ismoe:evaluate        test period, baselines persistence + climatology

and prints CC / RMSE / KGE per model on the test years and the seasonal routing weights of ISMoE.

    scripts/env.sh .venv/bin/python scripts/caravan.py --basin camelsch_4001 --out out/caravan
    scripts/env.sh .venv/bin/python scripts/caravan.py            # both basins

Outputs per basin in <out>/<basin>/: the rasters (rasters/), dataset.npz, <model>.pt,
<model>.log.jsonl, evaluation/ (metrics.csv, metrics.json, report.html, seasonal_importance.csv);
and <out>/summary.json + <out>/summary.md over all basins.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "caravan")
BASINS = ("camelsch_4001", "camelses_1414")
from ismoe_qgis.options import MODEL_TYPES  # noqa: E402  (after the repository is on sys.path)


def _shift_years(day, years):
    import numpy as np
    d = np.datetime64(day, "D")
    y = int(str(d)[:4]) - years
    md = str(d)[4:]
    if md == "-02-29":
        md = "-02-28"
    return np.datetime64(f"{y}{md}", "D")


def split_dates(end, test_years, val_years):
    """(val_start, test_start): the last `test_years` whole years up to `end` are the test period."""
    import numpy as np
    after = np.datetime64(end, "D") + np.timedelta64(1, "D")
    test_start = _shift_years(after, test_years)
    val_start = _shift_years(test_start, val_years)
    return str(val_start), str(test_start)


# --------------------------------------------------------------------------- runners
class InProcessRunner:
    """processing.run in a headless QgsApplication with the ismoe provider registered."""

    def __init__(self):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        from qgis.core import QgsApplication
        self.app = QgsApplication.instance()
        if self.app is None:
            self.app = QgsApplication([], False)
            self.app.initQgis()
        plugins = os.path.join(QgsApplication.pkgDataPath(), "python", "plugins")
        if plugins not in sys.path:
            sys.path.append(plugins)
        from processing.core.Processing import Processing
        Processing.initialize()
        from ismoe_qgis.algorithms.provider import IsmoeProvider
        reg = QgsApplication.processingRegistry()
        if reg.providerById("ismoe") is None:
            self.provider = IsmoeProvider()
            reg.addProvider(self.provider)

    def __call__(self, alg, params, verbose=False):
        import processing
        from qgis.core import QgsProcessingFeedback

        class Feedback(QgsProcessingFeedback):
            def pushInfo(self, info):  # noqa: N802
                if verbose:
                    print("    " + str(info), flush=True)

            def reportError(self, error, fatalError=False):  # noqa: N802, N803
                print("    ERROR: " + str(error), flush=True)

        return processing.run(alg, params, feedback=Feedback())


class QgisProcessRunner:
    """The qgis_process binary: `run ALG --json -- NAME=value ...` (needs `plugins enable ismoe_qgis`)."""

    def __init__(self):
        self.binary = os.environ.get("QGIS_PROCESS") or "/usr/bin/qgis_process.bin"

    def __call__(self, alg, params, verbose=False):
        args = [self.binary, "run", alg, "--json", "--"]
        for k, v in params.items():
            for item in (v if isinstance(v, (list, tuple)) else [v]):
                args.append(f"{k}={'true' if item is True else 'false' if item is False else item}")
        proc = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"{alg} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        text = proc.stdout[proc.stdout.find("{"):]
        return json.loads(text)["results"]


# --------------------------------------------------------------------------- one basin
def run_basin(basin, args, run):
    from ismoe_qgis.data.tables import caravan_to_rasters

    t0 = time.time()
    out = os.path.join(os.path.abspath(args.out), basin)
    os.makedirs(out, exist_ok=True)
    print(f"== {basin}", flush=True)
    conv = caravan_to_rasters(args.data, basin, os.path.join(out, "rasters"), start=args.start, end=args.end)
    print(f"  {conv['n_days']} days {conv['start']}..{conv['end']}, gauge lon {conv['lon']} lat {conv['lat']} "
          f"({time.time() - t0:.0f} s)", flush=True)
    ds = os.path.join(out, "dataset.npz")
    if args.reuse and os.path.exists(ds) and _same_dataset(ds, conv, args.seq_len):
        print(f"  reusing {ds}", flush=True)
    else:
        run("ismoe:preparedataset", {
            "FACTORS": list(conv["layers"].values()), "FACTOR_GROUPS": conv["factor_groups"],
            "TARGET": conv["target_path"], "PATCH_SIZE": 1, "SEQ_LEN": args.seq_len, "OUTPUT": ds})
        print(f"  dataset written ({time.time() - t0:.0f} s)", flush=True)
    val_start, test_start = split_dates(conv["end"], args.test_years, args.val_years)
    print(f"  split: train ..{val_start}, validation {val_start}..{test_start}, test {test_start}..{conv['end']}",
          flush=True)
    models, train_info = {}, {}
    for mt in args.models:
        path = os.path.join(out, f"{mt}.pt")
        t1 = time.time()
        res = run("ismoe:train", {
            "DATASET": ds, "MODEL": MODEL_TYPES.index(mt), "DEVICE": args.device_index, "EPOCHS": args.epochs,
            "SAMPLES_PER_EPOCH": args.samples_per_epoch, "BATCH_SIZE": args.batch_size,
            "LEARNING_RATE": args.lr, "PATIENCE": args.patience, "SEED": args.seed, "HIDDEN": args.hidden,
            "VAL_START": val_start, "TEST_START": test_start, "OUTPUT": path,
            "LOG": os.path.join(out, f"{mt}.log.jsonl")}, verbose=args.verbose)
        models[mt] = path
        train_info[mt] = {"best_epoch": res.get("BEST_EPOCH"), "val_cc": res.get("VAL_CC"),
                          "seconds": round(time.time() - t1, 1)}
        print(f"  trained {mt}: best epoch {res.get('BEST_EPOCH')}, validation CC {res.get('VAL_CC'):.3f} "
              f"({time.time() - t1:.0f} s)", flush=True)
    ev_dir = os.path.join(out, "evaluation")
    res = run("ismoe:evaluate", {"MODELS": [models[m] for m in args.models], "DATASET": ds, "BASELINES": [0, 1],
                                 "PERIOD": 0, "DEVICE": args.device_index, "OUTPUT": ev_dir}, verbose=args.verbose)
    summary = summarise(basin, ev_dir, conv, val_start, test_start, train_info)
    summary["seconds"] = round(time.time() - t0, 1)
    print_summary(summary)
    return summary


def _same_dataset(path, conv, seq_len):
    from ismoe_qgis.data.cube import Cube
    try:
        cube = Cube.load(path)
    except (OSError, ValueError):
        return False
    return (cube.seq_len == seq_len and cube.patch_size == 1 and dict(cube.factors) == conv["factors"]
            and str(cube.dates[0]) == conv["start"] and str(cube.dates[-1]) == conv["end"])


def summarise(basin, ev_dir, conv, val_start, test_start, train_info):
    metrics = {}
    with open(os.path.join(ev_dir, "metrics.csv"), newline="") as fh:
        for r in csv.DictReader(fh):
            if r["group_kind"] in ("overall", "season"):
                key = r["model"] if r["group_kind"] == "overall" else f"{r['model']}|{r['group']}"
                metrics[key] = {k: (float(r[k]) if r[k] not in ("", None) else None)
                                for k in ("cc", "rmse", "ubrmse", "bias", "kge")}
                metrics[key]["n"] = int(r["n"])
    weights = {}
    imp_path = os.path.join(ev_dir, "seasonal_importance.csv")
    if os.path.exists(imp_path):
        with open(imp_path, newline="") as fh:
            for r in csv.DictReader(fh):
                if r["period_kind"] in ("season", "month") and r["region"] == "all" and r["mean_weight"]:
                    weights.setdefault(r["period_kind"], {}).setdefault(r["period"], {})[r["factor"]] = \
                        float(r["mean_weight"])
    overall = {m: v for m, v in metrics.items() if "|" not in m}
    seasonal = {m: v for m, v in metrics.items() if "|" in m}
    return {"basin": basin, "lon": conv["lon"], "lat": conv["lat"], "period": [conv["start"], conv["end"]],
            "val_start": val_start, "test_start": test_start, "overall": overall, "by_season": seasonal,
            "weights": weights, "training": train_info, "evaluation": ev_dir}


def _f(v, fmt):
    return "   nan" if v is None else format(v, fmt)


def print_summary(s):
    print(f"\n  {s['basin']}: test {s['test_start']}..{s['period'][1]}")
    print(f"  {'model':<14}{'CC':>7}{'RMSE':>9}{'ubRMSE':>9}{'bias':>9}{'KGE':>8}{'n':>7}")
    for m, v in s["overall"].items():
        print(f"  {m:<14}{_f(v['cc'], '7.3f')}{_f(v['rmse'], '9.4f')}{_f(v['ubrmse'], '9.4f')}"
              f"{_f(v['bias'], '+9.4f')}{_f(v['kge'], '8.3f')}{v['n']:>7}")
    seasons = s["weights"].get("season", {})
    if seasons:
        factors = list(next(iter(seasons.values())))
        print("\n  ISMoE mean routing weight by season (test period)")
        print("  " + f"{'season':<8}" + "".join(f"{f[:13]:>14}" for f in factors))
        for season in ("DJF", "MAM", "JJA", "SON"):
            if season in seasons:
                print("  " + f"{season:<8}" + "".join(f"{seasons[season].get(f, float('nan')):>14.3f}"
                                                      for f in factors))
    print(flush=True)


def write_markdown(path, summaries):
    lines = ["# Caravan basins: ISMoE and baselines on the held-out test years", ""]
    for s in summaries:
        lines += [f"## {s['basin']} (gauge lon {s['lon']}, lat {s['lat']})", "",
                  f"Test period {s['test_start']}..{s['period'][1]}; validation from {s['val_start']}; "
                  f"training from {s['period'][0]}. Target: ERA5-Land volumetric soil water layer 1 (m3/m3).", "",
                  "| model | CC | RMSE | ubRMSE | bias | KGE | n |", "|---|---|---|---|---|---|---|"]
        for m, v in s["overall"].items():
            lines.append(f"| {m} | {_f(v['cc'], '.3f')} | {_f(v['rmse'], '.4f')} | {_f(v['ubrmse'], '.4f')} | "
                         f"{_f(v['bias'], '+.4f')} | {_f(v['kge'], '.3f')} | {v['n']} |")
        seasons = s["weights"].get("season", {})
        if seasons:
            factors = list(next(iter(seasons.values())))
            lines += ["", "ISMoE mean routing weight by season:", "",
                      "| season | " + " | ".join(factors) + " |", "|---" * (len(factors) + 1) + "|"]
            for season in ("DJF", "MAM", "JJA", "SON"):
                if season in seasons:
                    lines.append(f"| {season} | " + " | ".join(f"{seasons[season].get(f, float('nan')):.3f}"
                                                             for f in factors) + " |")
        lines.append("")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--basin", action="append", help="Caravan gauge_id (repeatable; default: both shared basins)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="Caravan folder (default ../shared/data/caravan)")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "caravan"))
    ap.add_argument("--start", help="first date to use (YYYY-MM-DD; default: the whole series)")
    ap.add_argument("--end", help="last date to use")
    ap.add_argument("--seq-len", type=int, default=30)
    ap.add_argument("--test-years", type=int, default=5)
    ap.add_argument("--val-years", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODEL_TYPES))
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--samples-per-epoch", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--reuse", action="store_true", help="keep an existing dataset.npz of the same basin/settings")
    ap.add_argument("--qgis-process", action="store_true", help="run the algorithms with the qgis_process binary")
    ap.add_argument("--verbose", action="store_true", help="show the algorithms' log")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODEL_TYPES]
    if bad:
        ap.error(f"unknown model type(s) {bad}; use {', '.join(MODEL_TYPES)}")
    args.device_index = ["auto", "cuda", "cpu"].index(args.device)
    if not os.path.isdir(args.data):
        print(f"Caravan data not found at {args.data} (use --data)", file=sys.stderr)
        return 2
    run = QgisProcessRunner() if args.qgis_process else InProcessRunner()
    summaries = [run_basin(b, args, run) for b in (args.basin or BASINS)]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump({"settings": {k: v for k, v in vars(args).items() if k != "device_index"},
                   "basins": summaries}, fh, indent=2)
    write_markdown(os.path.join(args.out, "summary.md"), summaries)
    print(f"summary: {os.path.join(args.out, 'summary.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

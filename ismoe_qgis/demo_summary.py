"""Summary of a demo run: per sub-region CC/RMSE on the held-out period and the top-weighted factor.

    python -m ismoe_qgis.demo_summary --region out/demo/region --prediction out/demo/prediction \
        --test-start 2019-01-01 --out out/demo/summary.json

Reads the prediction folder (sm.tif, weight_<factor>.tif), the demo's target and regions rasters.
No qgis import: runs from a plain Python.
"""
import argparse
import json
import os
import sys

import numpy as np


def _read(path):
    import rasterio
    with rasterio.open(path) as ds:
        a = ds.read().astype(np.float32)
        if ds.nodata is not None:
            a[a == ds.nodata] = np.nan
        return a, list(ds.descriptions)


def summarise(region_dir, prediction_dir, test_start=None):
    from .model.metrics import metrics
    man = json.load(open(os.path.join(region_dir, "demo.json")))
    pred = json.load(open(os.path.join(prediction_dir, "prediction.json")))
    sm, _ = _read(os.path.join(prediction_dir, pred["sm"]))
    dates = np.array(pred["dates"], dtype="datetime64[D]")
    target, tdesc = _read(os.path.join(region_dir, man["target"]))
    tdates = np.array([d[:10] for d in tdesc], dtype="datetime64[D]")
    regions, _ = _read(os.path.join(region_dir, man["regions"]))
    regions = regions[0]
    idx = np.searchsorted(tdates, dates)
    if not (tdates[idx] == dates).all():
        raise ValueError("prediction dates are not in the target's dates")
    obs = target[idx]
    test_start = np.datetime64(test_start or str(dates[-1] - np.timedelta64(364, "D")), "D")
    sel = dates >= test_start
    weights = {f: _read(os.path.join(prediction_dir, fn))[0] for f, fn in pred["weights"].items()}
    out = {"held_out": [str(dates[sel][0]), str(dates[sel][-1])], "model_type": pred.get("model_type"),
           "regions": {}}
    for code, rname in man["region_names"].items():
        m = regions == int(code)
        o, e = obs[sel][:, m], sm[sel][:, m]
        met = metrics(o, e)
        mean_w = {f: float(np.nanmean(w[sel][:, m])) for f, w in weights.items()}
        ranked = sorted(mean_w, key=mean_w.get, reverse=True)
        planted = man["drivers"].get(rname, [])
        out["regions"][rname] = {
            "cc": met["cc"], "rmse": met["rmse"], "kge": met["kge"], "n": met["n"],
            "top_factor": ranked[0], "mean_weights": mean_w, "ranking": ranked, "planted_drivers": planted,
            "planted_in_top2": sorted(ranked[:len(planted)]) == sorted(planted)}
    return out


def format_table(summary) -> str:
    lines = [f"held-out period {summary['held_out'][0]}..{summary['held_out'][1]} ({summary.get('model_type')})",
             f"{'region':<10}{'CC':>7}{'RMSE':>9}  {'top factor':<14}{'planted drivers':<24}weights (top 3)"]
    for r, s in summary["regions"].items():
        top3 = ", ".join(f"{f} {s['mean_weights'][f]:.2f}" for f in s["ranking"][:3])
        lines.append(f"{r:<10}{s['cc']:>7.3f}{s['rmse']:>9.4f}  {s['top_factor']:<14}"
                     f"{'+'.join(s['planted_drivers']):<24}{top3}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--region", required=True)
    ap.add_argument("--prediction", required=True)
    ap.add_argument("--test-start", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    s = summarise(a.region, a.prediction, a.test_start)
    with open(a.out, "w") as f:
        json.dump(s, f, indent=1)
    print(format_table(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())

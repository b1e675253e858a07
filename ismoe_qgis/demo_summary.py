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


def region_summary(obs, est, weights, regions, region_names, drivers, dates):
    """Per sub-region skill and routing weights, from arrays.

    obs, est: (T, H, W) SM (NaN = missing); weights: {factor: (T, H, W)}; regions: (H, W) int codes;
    region_names: {code: name}; drivers: {name: [planted factors]}; dates: (T,) datetime64.
    Per region: pooled CC/RMSE/KGE, mean weight per factor (overall and per season), the factor
    ranking, and whether the planted drivers are the top-weighted factors.
    """
    from .model.metrics import metrics, season_of
    seasons = season_of(dates)
    out = {}
    for code, rname in region_names.items():
        m = regions == int(code)
        met = metrics(obs[:, m], est[:, m])
        mean_w = {f: float(np.nanmean(w[:, m])) for f, w in weights.items()}
        ranked = sorted(mean_w, key=mean_w.get, reverse=True)
        planted = list(drivers.get(rname, []))
        by_season = {}
        for s in ("DJF", "MAM", "JJA", "SON"):
            sel = seasons == s
            if sel.any():
                sw = {f: float(np.nanmean(w[sel][:, m])) for f, w in weights.items()}
                by_season[s] = {"mean_weights": sw, "ranking": sorted(sw, key=sw.get, reverse=True)}
        out[rname] = {
            "cc": met["cc"], "rmse": met["rmse"], "kge": met["kge"], "n": met["n"],
            "top_factor": ranked[0], "mean_weights": mean_w, "ranking": ranked, "planted_drivers": planted,
            "planted_rank": {f: ranked.index(f) + 1 for f in planted if f in ranked},
            "planted_are_top": sorted(ranked[:len(planted)]) == sorted(planted),
            "top_is_planted": ranked[0] in planted, "seasons": by_season}
    return out


def summarise(region_dir, prediction_dir, test_start=None):
    man = json.load(open(os.path.join(region_dir, "demo.json")))
    from .model.prediction_folder import read_manifest
    pred = read_manifest(prediction_dir)
    sm, _ = _read(os.path.join(prediction_dir, pred["sm"]))
    dates = np.array(pred["dates"], dtype="datetime64[D]")
    target, tdesc = _read(os.path.join(region_dir, man["target"]))
    tdates = np.array([d[:10] for d in tdesc], dtype="datetime64[D]")
    regions, _ = _read(os.path.join(region_dir, man["regions"]))
    idx = np.searchsorted(tdates, dates)
    if (idx >= len(tdates)).any() or not (tdates[np.minimum(idx, len(tdates) - 1)] == dates).all():
        raise ValueError("prediction dates are not in the target's dates")
    test_start = np.datetime64(test_start or str(dates[-1] - np.timedelta64(364, "D")), "D")
    sel = dates >= test_start
    weights = {f: _read(os.path.join(prediction_dir, fn))[0][sel] for f, fn in pred["weights"].items()}
    return {"held_out": [str(dates[sel][0]), str(dates[sel][-1])], "model_type": pred.get("model_type"),
            "regions": region_summary(target[idx][sel], sm[sel], weights, regions[0], man["region_names"],
                                      man["drivers"], dates[sel])}


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
    from .fileutil import atomic_output
    with atomic_output(a.out, ".json") as tmp, open(tmp, "w") as f:
        json.dump(s, f, indent=1)
    print(format_table(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Summary of a demo run: per sub-region CC/RMSE on the held-out period and the factors ranked by importance.

    python -m ismoe_qgis.demo_summary --region out/demo/region --prediction out/demo/prediction \
        --test-start 2019-01-01 --out out/demo/summary.json

Reads the prediction folder (sm.tif, weight_<factor>.tif, variance_share_<factor>.tif), the demo's target and
regions rasters. The ranking follows the product's importance measure (model/importance.py): the variance share
where the prediction has it (additive and gated models: the region's mean of each pixel's share of the period's
contribution variance; the prediction covers the held-out period), else the mean daily weight.
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


def region_summary(obs, est, weights, regions, region_names, drivers, dates, shares=None):
    """Per sub-region skill and importance, from arrays.

    obs, est: (T, H, W) SM (NaN = missing); weights: {factor: (T, H, W)}; regions: (H, W) int codes;
    region_names: {code: name}; drivers: {name: [planted factors]}; dates: (T,) datetime64;
    shares: optional {factor: {band: (H, W)}} variance shares (bands "period", "DJF", ... of
    contribution_stats.SHARE_BANDS).
    Per region: pooled CC/RMSE/KGE, mean weight per factor (overall and per season), with shares the
    mean variance share per factor (overall and per season), the factor ranking by the importance
    measure (the shares when given, else the weights), and whether the planted drivers are its top.
    """
    from .model.metrics import metrics, season_of
    seasons = season_of(dates)
    out = {}
    for code, rname in region_names.items():
        m = regions == int(code)
        met = metrics(obs[:, m], est[:, m])
        mean_w = {f: float(np.nanmean(w[:, m])) for f, w in weights.items()}
        mean_s = ({f: float(np.nanmean(b["period"][m])) for f, b in shares.items()} if shares else None)
        importance = mean_s if mean_s else mean_w
        ranked = sorted(importance, key=importance.get, reverse=True)
        planted = list(drivers.get(rname, []))
        by_season = {}
        for s in ("DJF", "MAM", "JJA", "SON"):
            sel = seasons == s
            if sel.any():
                sw = {f: float(np.nanmean(w[sel][:, m])) for f, w in weights.items()}
                entry = {"mean_weights": sw, "ranking": sorted(sw, key=sw.get, reverse=True)}
                if shares:
                    ss = {f: float(np.nanmean(b[s][m])) for f, b in shares.items()}
                    entry.update(mean_shares=ss, ranking=sorted(ss, key=ss.get, reverse=True))
                by_season[s] = entry
        out[rname] = {
            "cc": met["cc"], "rmse": met["rmse"], "kge": met["kge"], "n": met["n"],
            "importance": "variance_share" if mean_s else "weight", "mean_shares": mean_s,
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
    shares = None
    vs = pred.get("variance_share") or {}
    if vs.get("files") and "DJF" in (vs.get("bands") or []) and dates[0] >= test_start:
        shares = {}
        for f, fn in vs["files"].items():
            a, _ = _read(os.path.join(prediction_dir, fn))
            shares[f] = {b: a[i] for i, b in enumerate(vs["bands"])}
    return {"held_out": [str(dates[sel][0]), str(dates[sel][-1])], "model_type": pred.get("model_type"),
            "mixture": pred.get("mixture"),
            "regions": region_summary(target[idx][sel], sm[sel], weights, regions[0], man["region_names"],
                                      man["drivers"], dates[sel], shares)}


def format_table(summary) -> str:
    regions = summary["regions"]
    by_share = any(s.get("mean_shares") for s in regions.values())
    what = "variance shares" if by_share else "weights"
    model = summary.get("model_type") + (f", {summary['mixture']}" if summary.get("mixture") else "")
    lines = [f"held-out period {summary['held_out'][0]}..{summary['held_out'][1]} ({model})",
             f"{'region':<10}{'CC':>7}{'RMSE':>9}  {'top factor':<14}{'planted drivers':<24}{what} (top 3)"]
    for r, s in regions.items():
        values = s["mean_shares"] if by_share else s["mean_weights"]
        top3 = ", ".join(f"{f} {values[f]:.2f}" for f in s["ranking"][:3])
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

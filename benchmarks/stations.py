#!/usr/bin/env python3
"""Real stations: the Hawaii ISMN case (../shared/data/hawaii), issue 14's station benchmark.

    scripts/env.sh .venv/bin/python benchmarks/stations.py                  # full run (~10 min on 1 thread)
    scripts/env.sh .venv/bin/python benchmarks/stations.py --quick          # smoke run (~40 s)
        [--seeds 42,45,48] [--members 3] [--epochs 15] [--samples 4096] [--folds 4]
        [--patch 3] [--seq-len 30] [--threads 1] [--no-station-drivers] [--no-sm-informed]
        [--data DIR] [--out out/bench/stations.json]             (also writes stations.md beside it)

Core API only (prepare_dataset, train, evaluate; no QGIS). 8 SCAN stations on Hawai'i island,
daily UTC-day means of the 0.05 m sensor (ismn_daily.csv); time split: train 2017-01-01..2018-06-30,
validation (early stopping) 2018-07-01..09-30, test 2018-10-01..12-31. Nothing is chosen on the test
period: the factor set, patch 3 / sequence 30 days, GAP_POLICY=fill, 15 epochs x 4096 windows and the
seeds are fixed beforehand (the sizes from the brief, the rest from the data's coverage below).

Factors (the gridded, non-soil-moisture variables of the NetCDF files; there is no precipitation or
radiation in them, only soil temperature, and SWE, which is 0 everywhere):
    soil_temp_era5land  era5land.nc:stl1 (0.1 deg; the reference grid: the stations' pixels are ERA5-Land cells)
    soil_temp_gldas     gldas_noah21.nc:SoilTMP0_10cm_inst, SoilTMP10_40cm_inst (0.25 deg, bilinear onto 0.1 deg)
    soil_temp_era5      era5.nc:stl1 (0.25 deg, bilinear)
The 0.25 deg products have no cell at some stations (GLDAS: Kukuihaele; ERA5: IslandDairy, Kainaliu),
so with GAP_POLICY=skip those 3 stations would get no sample at all (issue 14's silent drop) and be
missing from every row; GAP_POLICY=fill keeps them (the missing factor is its mean, a silent factor the
router masks there). The soil-moisture products are references, never factors, except in the rows
labelled [SM input] (ERA5-Land swvl1 added as a factor: not comparable with the reference rows).

Rows
- ismoe ensemble: ModelConfig members=3 (ENSEMBLE) trained together, one per ensemble seed. Seeds are
  spaced by --members (42, 45, 48): member n of the ensemble of seed s starts from seed s + n, so
  ensemble seeds 42, 43, 44 would share initial weights.
- single members: the ensembles' members (evaluate's "[member k]" estimates).
- cnn_lstm, mean_expert: one model per seed.
- reference products at the stations' pixels on the same days: ERA5-Land swvl1, ESA CCI SM, GLDAS
  sm_0_10cm (bilinear onto the 0.1 deg grid by the core) and SMAP L3 AM (reprojected from EASE-Grid 2.0,
  no quality mask, see the README of the data).
- leave-stations-out: TrainConfig(split="locations", folds=4): 4 fold models (2 stations held out
  each) trained together, scored out of fold (every station by the model that never saw it).
- station drivers: the issue's item 6 through the core's STATION_FACTORS: soil_temp_c and precip_mm of
  ismn_daily.csv become two more factors beside the gridded ones, at the stations' pixels only (NaN
  elsewhere, i.e. the mean after normalisation; KemoleGulch and ManaHouse have no rain gauge).
- climatology (the training period's day-of-year mean of the observations) and persistence (yesterday's
  observation) are context rows: they use the target, so they are scored on the common station-days
  where they are defined and do not restrict them.

Scoring. The estimates come from ``evaluate`` (test period, out of fold for leave-stations-out); they are
then scored here on common station-days: every model row and the reference products of the set valid.
- set "daily" (headline): models + ERA5-Land + ESA CCI + GLDAS (ESA CCI and GLDAS have no value at
  Kukuihaele, so it drops out of this set);
- set "era5land": models + ERA5-Land only (all stations; the target comparison on the most days);
- set "smap": models + ERA5-Land + SMAP (SMAP has a value on a few days only: min 15 days a station).
Per-station temporal CC (median and IQR over the stations with >= min days) is the headline, with
pooled CC, bias and ubRMSE over all the set's station-days, and the median per-station |bias|.

Targets (issue 14), judged on set "daily" and repeated on "era5land":
- the ensemble's median per-station CC >= ERA5-Land's (every ensemble seed, and their mean);
- over the ensemble seeds, the median per-station CC spreads (max - min) by <= 0.1;
- leave-stations-out |bias| <= 0.05 m3/m3 at every station (test period, out of fold; the all-dates
  out-of-fold bias is given beside it).
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("OMP_NUM_THREADS", "1")
from ismoe_qgis.threads import passive_openmp_wait  # noqa: E402

passive_openmp_wait()

import numpy as np  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "hawaii")
VAL_START, TEST_START = "2018-07-01", "2018-10-01"
BIAS_MAX, SPREAD_MAX = 0.05, 0.1
REFERENCES = {"ERA5-Land": ("era5land.nc", "swvl1"), "ESA CCI": ("esacci_sm.nc", "sm"),
              "GLDAS": ("gldas_noah21.nc", "sm_0_10cm"), "SMAP L3": ("smap_l3_am.nc", "soil_moisture")}
SETS = {"daily": ("ERA5-Land", "ESA CCI", "GLDAS"), "era5land": ("ERA5-Land",), "smap": ("ERA5-Land", "SMAP L3")}
SET_MIN_DAYS = {"daily": 30, "era5land": 30, "smap": 15}
CONTEXT = ("climatology", "persistence")
STATION_COLUMNS = ("soil_temp_c", "precip_mm")  # ismn_daily.csv columns for the station-drivers row


def nc(data, fname, var):
    return f'NETCDF:"{os.path.join(data, fname)}":{var}'


def gridded_factors(data):
    return {"soil_temp_era5land": [("era5land_stl1", nc(data, "era5land.nc", "stl1"))],
            "soil_temp_gldas": [("gldas_soiltmp_0_10", nc(data, "gldas_noah21.nc", "SoilTMP0_10cm_inst")),
                                ("gldas_soiltmp_10_40", nc(data, "gldas_noah21.nc", "SoilTMP10_40cm_inst"))],
            "soil_temp_era5": [("era5_stl1", nc(data, "era5.nc", "stl1"))]}


class Log:
    """Callbacks' log: everything to a file, warnings also to the screen."""

    def __init__(self, path):
        self.f = open(path, "a")
        self.warnings = []

    def __call__(self, msg):
        self.f.write(msg + "\n")
        if msg.startswith("warning"):
            self.warnings.append(msg)
            print("   ", msg[:300])

    def callbacks(self):
        from ismoe_qgis.core_callbacks import Callbacks
        return Callbacks(log=self)


def prepare(data, factors, patch, seq_len, log, station_columns=()):
    """The stations' cube; `station_columns` (columns of ismn_daily.csv) become factors through the core's
    station-table factors (STATION_FACTORS): one factor per column, known at the stations' pixels only."""
    from ismoe_qgis.data import stations as st
    from ismoe_qgis.data.prepare import prepare_dataset
    pts, wkt = st.read_points_vector(os.path.join(data, "ismn_stations.gpkg"))
    table_path = os.path.join(data, "ismn_daily.csv")
    table = st.read_station_table(table_path, log=log)
    columns = {f"station_{c}": {c: st.read_station_table(table_path, value_field=c)} for c in station_columns}
    return prepare_dataset(factors, stations={"points": pts, "crs_wkt": wkt, "table": table, "columns": columns,
                                              "points_name": "ismn_stations", "table_name": "ismn_daily.csv"},
                           patch_size=patch, seq_len=seq_len, callbacks=log.callbacks())


def with_sm_input(cube, data, log):
    """The cube plus ERA5-Land swvl1 as a factor ([SM input] rows: a reference product used as input)."""
    from ismoe_qgis.data import rasters
    from ismoe_qgis.data.cube import Cube
    info = rasters.open_series(nc(data, "era5land.nc", "swvl1"), name="era5land_swvl1", log=log)
    grid = rasters.Grid(**{k: cube.grid[k] for k in ("crs_wkt", "transform", "width", "height")})
    layer = rasters.read_aligned(info, grid, cube.dates, allow_missing=True, name="era5land_swvl1", log=log)
    return Cube(x=np.concatenate([cube.x, layer[None].astype(np.float32)]), y=cube.y, target_rows=cube.target_rows,
                target_cols=cube.target_cols, dates=cube.dates,
                factors={**cube.factors, "sm_era5land": ["era5land_swvl1"]},
                variables=list(cube.variables) + ["era5land_swvl1"], grid=cube.grid, patch_size=cube.patch_size,
                seq_len=cube.seq_len, target_kind=cube.target_kind, station_ids=cube.station_ids)


def train_one(cube, path, model_type, seed, a, log, members=1, split="time"):
    from ismoe_qgis.model.train import TrainConfig, train
    cfg = TrainConfig(epochs=a.epochs, samples_per_epoch=a.samples, seed=seed, device="cpu", gap_policy="fill",
                      val_start=VAL_START, test_start=TEST_START, threads=a.threads, split=split, folds=a.folds)
    log(f"=== train {os.path.basename(path)}: {model_type}, seed {seed}, members {members}, split {split}")
    t0 = time.time()
    res = train(cube, path, model_type, cfg, model_options={"members": members} if members > 1 else None,
                callbacks=log.callbacks())
    sec = time.time() - t0
    print(f"  trained {os.path.basename(path):28s} {sec:6.1f} s, best epoch {res['best_epoch']}/{len(res['history'])}, "
          f"val CC {res['val_cc']:.3f}", flush=True)
    out = {"seconds": round(sec, 1), "best_epoch": res["best_epoch"], "epochs_run": len(res["history"]),
           "val_cc": res["val_cc"], "per_location": res["split"].get("per_location")}
    if "cv" in res:
        out["cv"] = {"fold_of": res["cv"]["fold_of"], "locations": res["cv"]["locations"]}
    if "uncertainty" in res:
        out["uncertainty"] = res["uncertainty"]
    return out


def run_evaluate(cube, models, log, references=None, period="test", baselines=CONTEXT):
    from ismoe_qgis.model.evaluate import evaluate
    t0 = time.time()
    res = evaluate(cube, models, references=references or {}, period=period, baselines=baselines, device="cpu",
                   callbacks=log.callbacks())
    print(f"  evaluated {len(models)} model(s) + {len(references or {})} reference(s), period {period}: "
          f"{time.time() - t0:.1f} s", flush=True)
    return res


# --------------------------------------------------------------------------- scoring
def _f(v):
    v = float(v)
    return v if np.isfinite(v) else None


def score_set(obs, estimates, names, required, ids, min_days):
    """Score `names` on the station-days where obs and every `required` estimate are valid (context rows on
    the part of it where they are defined)."""
    from ismoe_qgis.model.metrics import location_skill_samples, metrics
    common = np.isfinite(obs)
    for r in required:
        common &= np.isfinite(estimates[r])
    N = obs.shape[1]
    rows = {}
    for name in names:
        e = estimates[name]
        m = common & np.isfinite(e)
        tt, nn = np.nonzero(m)
        o, x = obs[tt, nn], e[tt, nn]
        sk = location_skill_samples(o, x, nn, N, min_days)
        pooled = metrics(o, x) if len(o) > 2 else {}
        s = sk["summary"]
        absb = np.abs(sk["bias"][sk["qualified"]])
        rows[name] = {
            "n_samples": int(len(o)), "n_stations": int(sk["n_qualified"]),
            "cc_median": _f(s["cc"]["median"]), "cc_p25": _f(s["cc"]["p25"]), "cc_p75": _f(s["cc"]["p75"]),
            "pooled_cc": _f(pooled.get("cc", np.nan)), "pooled_bias": _f(pooled.get("bias", np.nan)),
            "pooled_ubrmse": _f(pooled.get("ubrmse", np.nan)),
            "abs_bias_median": _f(np.median(absb)) if absb.size else None,
            "ubrmse_median": _f(s["ubrmse"]["median"]),
            "station_cc": {ids[n]: _f(sk["cc"][n]) for n in range(N)},
            "station_bias": {ids[n]: _f(sk["bias"][n]) for n in range(N)},
            "station_days": {ids[n]: int(sk["n_days"][n]) for n in range(N)}}
    return {"required": list(required), "min_days": min_days, "n_common": int(common.sum()),
            "station_days": {ids[n]: int(common[:, n].sum()) for n in range(N)}, "rows": rows}


def spread_skill(obs, mean, members, required_mask, residual_sd=None):
    """Fraction of observations inside the ensemble mean +- 2 member sd, and corr(sd, |error|); with the
    model's residual sd (train, validation samples) also inside +-2 predictive sd = sqrt(sd^2 + residual^2)."""
    sd = np.std(members, axis=0)
    m = required_mask & np.isfinite(mean) & np.isfinite(sd)
    err, s = np.abs(mean[m] - obs[m]), sd[m]
    corr = float(np.corrcoef(s, err)[0, 1]) if len(err) > 2 and np.std(s) > 0 else float("nan")
    out = {"inside_2sd": _f(np.mean(err <= 2 * s)) if len(err) else None, "corr_spread_abs_error": _f(corr),
           "mean_spread": _f(np.mean(s)) if len(s) else None, "n": int(m.sum())}
    if residual_sd is not None:
        out["residual_sd"] = _f(residual_sd)
        out["inside_2sd_predictive"] = _f(np.mean(err <= 2 * np.sqrt(s ** 2 + residual_sd ** 2))) if len(err) else None
    return out


def mean_weights(table):
    """Mean routing weight per factor over the evaluation period (from the season series)."""
    s = table.get(None, "season")
    n = np.asarray(s.n, np.float64)
    w = (np.asarray(s.mean, np.float64) * n).sum(0) / np.maximum(n.sum(0), 1)
    return {f: round(float(v), 3) for f, v in zip(table.factors, w)}


def _stat(vals):
    v = np.array([x for x in vals if x is not None], np.float64)
    if not v.size:
        return {"mean": None, "std": None, "min": None, "max": None, "range": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "range": float(v.max() - v.min()), "n": int(v.size)}


# --------------------------------------------------------------------------- report
def _n(v, fmt=".3f"):
    return "-" if v is None else format(v, fmt)


def row_groups(res):
    """Display rows: (label, [estimate names]) - several names = one row per name and a seeds summary."""
    g = []
    ens = res["names"]["ensembles"]
    g += [(f"ISMoE ensemble ({res['config']['members']} members) seed {s}", [n]) for s, n in ens.items()]
    g.append(("single members (all ensembles)", res["names"]["members"]))
    for mt in ("cnn_lstm", "mean_expert"):
        g += [(f"{mt} seed {s}", [n]) for s, n in res["names"][mt].items()]
    if res["names"].get("lso"):
        g.append((f"ISMoE leave-stations-out ({res['config']['folds']} folds, out of fold)", [res["names"]["lso"]]))
    if res["names"].get("station_drivers"):
        g.append(("ISMoE ensemble + station drivers [STATION_FACTORS]", [res["names"]["station_drivers"]]))
    if res["names"].get("sm_informed"):
        g.append(("ISMoE ensemble [SM input: ERA5-Land swvl1 as factor]", [res["names"]["sm_informed"]]))
    return g


def format_set(res, key):
    st = res["sets"][key]
    lines = [f"### Set `{key}`: common station-days of the models and {', '.join(st['required'][len(res['names']['all_models']):]) or 'no reference'} "
             f"({st['n_common']} station-days; per station: "
             + ", ".join(f"{k.replace('SCAN_', '')} {v}" for k, v in st["station_days"].items())
             + f"; stations with >= {st['min_days']} days enter the median)", "",
             "| row | stations | median CC [IQR] | pooled CC | pooled bias | pooled ubRMSE | median abs bias | n |",
             "|---|---|---|---|---|---|---|---|"]
    R = st["rows"]

    def line(label, name):
        r = R[name]
        return (f"| {label} | {r['n_stations']} | {_n(r['cc_median'])} [{_n(r['cc_p25'])}..{_n(r['cc_p75'])}] | "
                f"{_n(r['pooled_cc'])} | {_n(r['pooled_bias'], '+.3f')} | {_n(r['pooled_ubrmse'])} | "
                f"{_n(r['abs_bias_median'])} | {r['n_samples']} |")
    for label, names in row_groups(res):
        if len(names) == 1:
            lines.append(line(label, names[0]))
        else:
            med = _stat([R[n]["cc_median"] for n in names])
            pc = _stat([R[n]["pooled_cc"] for n in names])
            lines.append(f"| {label}: {med['n']} models, mean +- sd (min..max) | | {_n(med['mean'])} +- {_n(med['std'])} "
                         f"({_n(med['min'])}..{_n(med['max'])}) | {_n(pc['mean'])} +- {_n(pc['std'])} | | | | |")
    for name in [n for n in st["required"] if n not in res["names"]["all_models"]]:
        lines.append(line(f"**{name}** (reference)", name))
    for name in CONTEXT:
        if name in R:
            lines.append(line(f"{name} (uses the observations; context)", name))
    return lines


def format_station_table(res, key="daily"):
    st = res["sets"][key]
    R = st["rows"]
    names = list(res["names"]["ensembles"].values())
    cols = [(f"ens {s}", n) for s, n in res["names"]["ensembles"].items()]
    for mt in ("cnn_lstm", "mean_expert"):
        s, n = next(iter(res["names"][mt].items()))
        cols.append((f"{mt} {s}", n))
    cols.append(("LSO (oof)", res["names"]["lso"]))
    for k, label in (("station_drivers", "+station drv"), ("sm_informed", "[SM input]")):
        if res["names"].get(k):
            cols.append((label, res["names"][k]))
    cols += [(r, r) for r in st["required"] if r not in res["names"]["all_models"]]
    del names
    lines = [f"### Per-station temporal CC (set `{key}`; '-' = fewer than {st['min_days']} days)", "",
             "| station | days | " + " | ".join(c for c, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for sid, days in st["station_days"].items():
        lines.append(f"| {sid.replace('SCAN_', '')} | {days} | "
                     + " | ".join(_n(R[n]["station_cc"][sid], "+.2f") for _, n in cols) + " |")
    return lines


def format_lso(res):
    L = res.get("lso")
    if not L:
        return []
    ens0 = next(iter(res["names"]["ensembles"].values()))
    lines = ["### Leave-stations-out: bias per station (out of fold), m3/m3", "",
             "Folds: " + "; ".join(f"fold {k + 1}: " + ", ".join(s.replace("SCAN_", "") for s in v)
                                    for k, v in L["folds"].items()), "",
             "| station | obs mean train period | obs mean test | LSO est mean test | LSO bias test | LSO bias all dates | "
             "time-split ens bias test | ERA5-Land bias test | LSO CC test |", "|---|---|---|---|---|---|---|---|---|"]
    for sid in L["test_bias"]:
        lines.append(f"| {sid.replace('SCAN_', '')} | {_n(L['obs_mean_train'][sid])} | {_n(L['obs_mean_test'][sid])} | "
                     f"{_n(L['est_mean_test'][sid])} | {_n(L['test_bias'][sid], '+.3f')} | "
                     f"{_n(L['all_bias'][sid], '+.3f')} | {_n(L['ens_bias'][sid], '+.3f')} | "
                     f"{_n(L['era5land_bias'][sid], '+.3f')} | {_n(L['test_cc'][sid], '+.2f')} |")
    sd = L["station_mean_sd"]
    lines += ["", f"Spread of the stations' mean levels (sd over stations of the station mean): training period "
                  f"{_n(sd['train'])}, test period {_n(sd['test'])} m3/m3. The biases are on the set `era5land` days "
                  f"(ManaHouse has fewer than 30 test days: no test value)."]
    del ens0
    return lines


def format_all(res):
    c = res["config"]
    out = [f"## Hawaii ISMN stations benchmark ({'QUICK smoke sizes' if c['quick'] else 'full'})", "",
           f"{c['epochs']} epochs x {c['samples']} windows, patch {c['patch']}, sequence {c['seq_len']}, "
           f"GAP_POLICY=fill, ensemble seeds {c['seeds']} ({c['members']} members each), folds {c['folds']}; "
           f"{c['torch_threads']} torch thread(s); load average {res['loadavg_start']} -> {res['loadavg_end']}; "
           f"wall time {res['seconds']:.0f} s; test period {res['period'][0]}..{res['period'][1]}.", "",
           "Factors: " + "; ".join(f"{f} = {', '.join(v)}" for f, v in c["factors"].items()), ""]
    for key in res["sets"]:
        out += format_set(res, key) + [""]
    out += format_station_table(res, "daily") + [""]
    out += format_station_table(res, "era5land") + [""]
    out += format_lso(res) + [""]
    out += ["### Ensembles: spread-skill and routing weights (set `daily`)", "",
            "| ensemble | inside +-2 sd | residual sd (validation) | inside +-2 predictive sd | corr(sd, abs error) "
            "| mean sd | mean weight per factor (test) |",
            "|---|---|---|---|---|---|---|"]
    for name, e in res["ensemble_info"].items():
        ss = e["spread_skill"]
        out.append(f"| {name} | {_n(ss['inside_2sd'], '.2f')} | {_n(ss.get('residual_sd'), '.4f')} | "
                   f"{_n(ss.get('inside_2sd_predictive'), '.2f')} | {_n(ss['corr_spread_abs_error'], '.2f')} | "
                   f"{_n(ss['mean_spread'], '.4f')} | " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                 (e.get("weights") or {}).items()) + " |")
    out += ["", "### Targets", ""]
    for t in res["targets"]:
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        out.append(f"- **{verdict}** {t['what']}: {t['detail']}")
    out += ["", "### Samples per station (train/validation/test, GAP_POLICY=fill)", "",
            ", ".join(f"{s.replace('SCAN_', '')} {a}/{b}/{d}" for s, a, b, d in res["samples_per_station"])]
    if res.get("warnings"):
        out += ["", "Warnings from the core:", ""] + [f"- {w}" for w in res["warnings"]]
    return "\n".join(out) + "\n"


def targets(res):
    out = []
    ens = list(res["names"]["ensembles"].values())
    for key in ("daily", "era5land"):
        R = res["sets"][key]["rows"]
        ref = R["ERA5-Land"]["cc_median"]
        meds = [R[n]["cc_median"] for n in ens]
        ok = all(m is not None and ref is not None and m >= ref for m in meds)
        mean = _stat(meds)["mean"]
        out.append({"what": f"ensemble median per-station CC >= ERA5-Land's (set {key})", "pass": bool(ok),
                    "detail": f"ensembles {', '.join(_n(m) for m in meds)} (mean {_n(mean)}) vs ERA5-Land {_n(ref)}"})
    R = res["sets"]["daily"]["rows"]
    meds = [R[n]["cc_median"] for n in ens]
    s = _stat(meds)
    mem = _stat([R[n]["cc_median"] for n in res["names"]["members"]])
    out.append({"what": f"spread of the median per-station CC over {len(ens)} ensemble seeds <= {SPREAD_MAX}",
                "pass": None if len(ens) < 2 else bool(s["range"] is not None and s["range"] <= SPREAD_MAX),
                "detail": f"range {_n(s['range'])} (sd {_n(s['std'])}) over seeds {list(res['names']['ensembles'])}; "
                          f"single members: range {_n(mem['range'])} (sd {_n(mem['std'])}) over {mem['n']}"
                          + ("" if len(ens) > 1 else " (one seed only: not judged)")})
    if res.get("lso"):
        b = [abs(v) for v in res["lso"]["test_bias"].values() if v is not None]
        ba = [abs(v) for v in res["lso"]["all_bias"].values() if v is not None]
        worst = max(res["lso"]["test_bias"], key=lambda k: abs(res["lso"]["test_bias"][k] or 0))
        out.append({"what": f"leave-stations-out |bias| <= {BIAS_MAX} m3/m3 at every station",
                    "pass": bool(b and max(b) <= BIAS_MAX),
                    "detail": f"test period: max {_n(max(b) if b else None)} ({worst.replace('SCAN_', '')}), median "
                              f"{_n(float(np.median(b)) if b else None)}, {sum(x <= BIAS_MAX for x in b)} of {len(b)} "
                              f"stations within; all dates: max {_n(max(ba) if ba else None)}, median "
                              f"{_n(float(np.median(ba)) if ba else None)}"})
    return out


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--seeds", default=None, help="ensemble seeds (default 42,45,48; spaced by --members)")
    ap.add_argument("--members", type=int, default=None, help="ensemble members (default 3)")
    ap.add_argument("--epochs", type=int, default=None, help="default 15")
    ap.add_argument("--samples", type=int, default=None, help="windows per epoch (default 4096)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--patch", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline-seeds", default=None, help="seeds of cnn_lstm / mean_expert (default: --seeds)")
    ap.add_argument("--no-station-drivers", action="store_true")
    ap.add_argument("--no-sm-informed", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 epochs x 512 windows, one seed, 2 members")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "bench", "stations.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.members = a.seeds or "42", a.members or 2
        a.epochs, a.samples = a.epochs or 2, a.samples or 512
    a.members = a.members or 3
    a.seeds = a.seeds or ",".join(str(42 + a.members * k) for k in range(3))
    a.epochs, a.samples = a.epochs or 15, a.samples or 4096
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    bseeds = [int(s) for s in (a.baseline_seeds or a.seeds).split(",") if s.strip()]
    if not os.path.exists(os.path.join(a.data, "ismn_daily.csv")):
        print(f"Hawaii data not found in {a.data}")
        return 2

    import torch
    torch.set_num_threads(a.threads)
    la0 = [round(v, 2) for v in os.getloadavg()]
    print(f"load average at start {la0}; torch threads {torch.get_num_threads()}", flush=True)
    t_start = time.time()
    work = os.path.join(os.path.dirname(os.path.abspath(a.out)), "stations_work")
    os.makedirs(work, exist_ok=True)
    log = Log(os.path.join(work, "log.txt"))
    log(f"==== run {time.strftime('%Y-%m-%d %H:%M:%S')} {vars(a)}")

    factors = gridded_factors(a.data)
    cube = prepare(a.data, factors, a.patch, a.seq_len, log)
    print(f"prepared: {cube.x.shape[0]} variables, {len(cube.dates)} days, {len(cube.station_ids)} stations "
          f"({time.time() - t_start:.1f} s)", flush=True)
    mp = lambda name: os.path.join(work, name + ".pt")  # noqa: E731
    trained, names = {}, {"ensembles": {}, "members": [], "cnn_lstm": {}, "mean_expert": {}}
    main_models = {}
    for s in seeds:
        n = f"ismoe_ens_s{s}"
        trained[n] = train_one(cube, mp(n), "ismoe", s, a, log, members=a.members)
        main_models[n] = mp(n)
        names["ensembles"][s] = n
        names["members"] += [f"{n} [member {k + 1}]" for k in range(a.members)]
    for mt in ("cnn_lstm", "mean_expert"):
        for s in bseeds:
            n = f"{mt}_s{s}"
            trained[n] = train_one(cube, mp(n), mt, s, a, log)
            main_models[n] = mp(n)
            names[mt][s] = n
    n = f"ismoe_lso_s{seeds[0]}"
    trained[n] = train_one(cube, mp(n), "ismoe", seeds[0], a, log, split="locations")
    main_models[n] = mp(n)
    names["lso"] = n

    refs = {k: nc(a.data, f, v) for k, (f, v) in REFERENCES.items()}
    ev = run_evaluate(cube, main_models, log, references=refs)
    estimates, obs, pdates = dict(ev["estimates"]), ev["obs"], ev["dates"]
    importance = dict(ev["importance"])
    ens_eval = dict(ev["ensemble"])

    if not a.no_station_drivers:
        cube_s = prepare(a.data, factors, a.patch, a.seq_len, log, station_columns=STATION_COLUMNS)
        n = f"ismoe_ens_stationdrv_s{seeds[0]}"
        trained[n] = train_one(cube_s, mp(n), "ismoe", seeds[0], a, log, members=a.members)
        ev_s = run_evaluate(cube_s, {n: mp(n)}, log, baselines=())
        assert np.array_equal(ev_s["dates"], pdates)
        estimates.update({k: v for k, v in ev_s["estimates"].items() if k.startswith(n)})
        importance[n] = ev_s["importance"][n]
        ens_eval[n] = ev_s["ensemble"][n]
        names["station_drivers"] = n
    if not a.no_sm_informed:
        cube_m = with_sm_input(cube, a.data, log)
        n = f"ismoe_ens_sminput_s{seeds[0]}"
        trained[n] = train_one(cube_m, mp(n), "ismoe", seeds[0], a, log, members=a.members)
        ev_m = run_evaluate(cube_m, {n: mp(n)}, log, baselines=())
        assert np.array_equal(ev_m["dates"], pdates)
        estimates.update({k: v for k, v in ev_m["estimates"].items() if k.startswith(n)})
        importance[n] = ev_m["importance"][n]
        ens_eval[n] = ev_m["ensemble"][n]
        names["sm_informed"] = n

    # the leave-stations-out model over all dates (out of fold: every station by the model that never saw it)
    ev_all = run_evaluate(cube, {names["lso"]: mp(names["lso"])}, log, period="all", baselines=())

    # ---- scoring on common station-days
    ids = list(cube.station_ids)
    all_models = [*names["ensembles"].values(), *names["cnn_lstm"].values(), *names["mean_expert"].values(),
                  names["lso"]] + [names[k] for k in ("station_drivers", "sm_informed") if k in names]
    names["all_models"] = all_models
    scored = all_models + names["members"]
    sets = {}
    for key, refs_needed in SETS.items():
        req = all_models + list(refs_needed)
        sets[key] = score_set(obs, estimates, scored + list(refs_needed) + list(CONTEXT), req, ids,
                              SET_MIN_DAYS[key])
        sets[key]["required"] = req

    daily_mask = np.isfinite(obs)
    for r in sets["daily"]["required"]:
        daily_mask &= np.isfinite(estimates[r])
    ensemble_info = {}
    for n in list(names["ensembles"].values()) + [names[k] for k in ("station_drivers", "sm_informed") if k in names]:
        mem = np.stack([estimates[f"{n} [member {k + 1}]"] for k in range(a.members)])
        ensemble_info[n] = {"spread_skill": spread_skill(obs, estimates[n], mem, daily_mask,
                                                         (trained[n].get("uncertainty") or {}).get("residual_sd")),
                            "weights": mean_weights(importance[n]) if n in importance else None,
                            "agreement": ens_eval.get(n, {}).get("agreement"),
                            "seeds": ens_eval.get(n, {}).get("seeds")}

    # ---- leave-stations-out bias
    lso = names["lso"]
    cv = trained[lso]["cv"]
    folds = {}
    for sid, f in zip(cv["locations"], cv["fold_of"]):
        folds.setdefault(int(f), []).append(sid)
    R = sets["daily"]["rows"]
    e_all, o_all = ev_all["estimates"][lso], ev_all["obs"]
    tr_mask = cube.dates < np.datetime64(VAL_START)
    with np.errstate(invalid="ignore"):
        all_bias = np.nanmean(np.where(np.isfinite(o_all), e_all - o_all, np.nan), axis=0)
    R8 = sets["era5land"]["rows"]
    lso_info = {"folds": {k: folds[k] for k in sorted(folds)},
                "test_bias": R8[lso]["station_bias"], "test_cc": R8[lso]["station_cc"],
                "all_bias": {sid: _f(b) for sid, b in zip(ids, all_bias)},
                "ens_bias": R8[names["ensembles"][seeds[0]]]["station_bias"],
                "era5land_bias": R8["ERA5-Land"]["station_bias"],
                "obs_mean_test": {sid: _f(np.nanmean(obs[:, j])) for j, sid in enumerate(ids)},
                "obs_mean_train": {sid: _f(np.nanmean(cube.y[tr_mask, j])) for j, sid in enumerate(ids)},
                "est_mean_test": {sid: _f(np.nanmean(np.where(np.isfinite(obs[:, j]), estimates[lso][:, j], np.nan)))
                                  for j, sid in enumerate(ids)},
                "station_mean_sd": {"train": _f(np.nanstd(np.nanmean(cube.y[tr_mask], axis=0))),
                                    "test": _f(np.nanstd(np.nanmean(obs, axis=0)))},
                "set": "era5land (models + ERA5-Land: every station)"}
    del R

    per = trained[names["ensembles"][seeds[0]]]["per_location"] or {}
    samples = [(s, per["train"][j], per["val"][j], per["test"][j]) for j, s in enumerate(per.get("locations", []))]
    res = {"config": {"quick": a.quick, "seeds": seeds, "baseline_seeds": bseeds, "members": a.members,
                      "epochs": a.epochs, "samples": a.samples, "folds": a.folds, "patch": a.patch,
                      "seq_len": a.seq_len, "torch_threads": torch.get_num_threads(), "gap_policy": "fill",
                      "val_start": VAL_START, "test_start": TEST_START, "data": a.data,
                      "factors": {f: [v for v, _ in vs] for f, vs in factors.items()},
                      "references": {k: f"{f}:{v}" for k, (f, v) in REFERENCES.items()}},
           "period": [str(pdates[0]), str(pdates[-1])], "stations": ids, "names": names, "trained": trained,
           "sets": sets, "ensemble_info": ensemble_info, "lso": lso_info, "samples_per_station": samples,
           "warnings": log.warnings, "loadavg_start": la0}
    res["targets"] = targets(res)
    res["seconds"] = round(time.time() - t_start, 1)
    res["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    md = format_all(res)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write(md)
    print()
    print(md)
    print(f"written {a.out} and {os.path.splitext(a.out)[0]}.md; wall time {res['seconds']:.0f} s; "
          f"load average {la0} -> {res['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

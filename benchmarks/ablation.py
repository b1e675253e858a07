"""Ablation: which training or model choice costs accuracy? One choice switched at a time.

    .venv/bin/python benchmarks/ablation.py [--cases demo,camelsch_4001,camelses_1414]
        [--variants base,no_expert_loss,...,cnn_lstm] [--seeds 42,43,44] [--mixture convex]
        [--epochs N] [--samples N] [--start YYYY-MM-DD] [--quick] [--device auto] [--threads N]
        [--out out/bench/ablation.json]          (also writes ablation.md beside it)

Cases
- ``demo``: the synthetic demo region as in benchmarks/interpretability.py (48 x 48 px, 3 years,
  patch 7, sequence 14, the last year held out, validation the 92 days before it); scored per
  sub-region (CC) and by the no-signal weight (the largest mean routing weight of a factor whose
  input is empty: snow in tundra and monsoon, lake in arid).
- ``camelsch_4001``, ``camelses_1414``: the Caravan basins in ../shared/data/caravan (ERA5-Land
  basin means), converted by ``caravan_to_rasters`` and prepared by ``prepare_dataset`` with
  patch 1 and sequence 30 (core only, no QGIS). Split as scripts/caravan.py's ``split_dates``:
  test = the last 3 whole years, validation = the year before, training = the rest. Scored on the
  test period: CC, RMSE, KGE (2009), alpha = sd(est) / sd(obs), and the mean routing weight of
  ``snow`` (overall and DJF). The basin with the smaller mean snow water equivalent is marked as
  the snow-poor one: its snow weight must stay <= 0.05.

Variants (each switches ONE choice of the base; base = the core's defaults, mixture --mixture):
  base               ModelConfig/TrainConfig defaults (expert_loss 0.5, mask_silent, expert_states
                     router, AdamW lr 4e-3, batch 64, weight decay 1e-4, one-cycle schedule)
  no_expert_loss     expert_loss = 0
  no_silent_mask     mask_silent = False
  router_inputs_doy  router_input = "inputs_doy" (the calendar router)
  ref_optim          lr 1e-3, batch 256, constant schedule, weight decay 0 (the plain reference's Adam)
  long_training      epochs x2, patience x2 (and samples per epoch x2 for the Caravan cases)
  mixture_additive   mixture = "additive", expert_loss = 0
  mixture_gated      mixture = "gated", router_input = "all_states", expert_loss = 0 (stateful_gated: so in
                     MEMORY=stateful); mixture_gated_mean / stateful_gated_mean: router_input = "inputs_mean"
  cnn_lstm           the reference model with the base training settings
  mean_expert        the per-factor experts with equal weights
  stateful           MEMORY=stateful, SPIN_UP 365, 32 supervised days per sequence, batch 256 supervised
                     days (8 sequences); stateful_spin90: SPIN_UP 90; stateful_n8: 8 supervised days (32
                     sequences a batch); stateful_cnn_lstm, stateful_mean_expert: the baselines so
  ensemble3          ENSEMBLE=3 (members trained together, scored as their mean); stateful_ensemble3 the
                     same in MEMORY=stateful
Every (case, variant) runs once per seed; the tables show mean +- std over seeds and the
difference of the mean to base ('*' where it exceeds twice the standard error of the per-seed
paired differences). A variant that raises is reported as an error and the rest still runs.
The JSON is rewritten after every run, so an interrupted run keeps what it finished.

``--quick``: a smoke run (demo 16 x 16 px x 2 years, Caravan from 8 years before its end,
2 epochs x 512 windows, seed 42): on 2 idle CPU cores about 1 minute for the demo case and
35 s for both basins, all variants. Full sizes on the same CPU: about 1 hour per case for
3 seeds (2.5-3 hours in all; less when early stopping ends runs sooner). Not a timed test.
"""
import argparse
import dataclasses
import datetime as _dt
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import interpretability as interp  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "caravan")
BASINS = ("camelsch_4001", "camelses_1414")
CASES = ("demo",) + BASINS
SNOW_MAX = 0.05
TEST_YEARS, VAL_YEARS = 3, 1

STATEFUL = {"memory": "stateful", "spin_up": 365}
STATEFUL_TRAIN = {"supervised_days": 32, "batch_size": 256}
# name -> (model type, ModelConfig changes, TrainConfig changes); long_training is scaled in train_settings
VARIANTS = {
    "base": ("ismoe", {}, {}),
    "no_expert_loss": ("ismoe", {}, {"expert_loss": 0.0}),
    "no_silent_mask": ("ismoe", {"mask_silent": False}, {}),
    "router_inputs_doy": ("ismoe", {"router_input": "inputs_doy"}, {}),
    "ref_optim": ("ismoe", {}, {"lr": 1e-3, "batch_size": 256, "schedule": "constant", "weight_decay": 0.0}),
    "long_training": ("ismoe", {}, {}),
    "mixture_additive": ("ismoe", {"mixture": "additive"}, {"expert_loss": 0.0}),
    # the gated mixture with the router that sees every factor's state (where a factor counts)
    "mixture_gated": ("ismoe", {"mixture": "gated", "router_input": "all_states"}, {"expert_loss": 0.0}),
    # the gated mixture whose gates see the factors' window means (slow context: where, not the day's weather)
    "mixture_gated_mean": ("ismoe", {"mixture": "gated", "router_input": "inputs_mean"}, {"expert_loss": 0.0}),
    "cnn_lstm": ("cnn_lstm", {}, {}),
    "mean_expert": ("mean_expert", {}, {}),
    # MEMORY=stateful: sequences of 365 spin-up + 32 supervised days, 8 sequences (256 supervised days) a batch
    "stateful": ("ismoe", STATEFUL, STATEFUL_TRAIN),
    "stateful_gated": ("ismoe", {**STATEFUL, "mixture": "gated", "router_input": "all_states"},
                       {**STATEFUL_TRAIN, "expert_loss": 0.0}),
    "stateful_gated_mean": ("ismoe", {**STATEFUL, "mixture": "gated", "router_input": "inputs_mean"},
                            {**STATEFUL_TRAIN, "expert_loss": 0.0}),
    "stateful_spin90": ("ismoe", {**STATEFUL, "spin_up": 90}, STATEFUL_TRAIN),
    "stateful_n8": ("ismoe", STATEFUL, {**STATEFUL_TRAIN, "supervised_days": 8}),
    "stateful_cnn_lstm": ("cnn_lstm", STATEFUL, STATEFUL_TRAIN),
    "stateful_mean_expert": ("mean_expert", STATEFUL, STATEFUL_TRAIN),
    # ENSEMBLE=3: three members trained together (issue 14's Caravan check: CC >= cnn_lstm, alpha 0.95-1.05)
    "ensemble3": ("ismoe", {"members": 3}, {}),
    "stateful_ensemble3": ("ismoe", {**STATEFUL, "members": 3}, STATEFUL_TRAIN),
}

# per-case sizes: full and --quick
DEMO = {"size": 48, "years": 3, "patch": 7, "seq": 14, "epochs": 10, "samples": 8192, "val_samples": 8000}
DEMO_QUICK = {"size": 16, "years": 2, "patch": 7, "seq": 14, "epochs": 2, "samples": 512, "val_samples": 1000}
CARAVAN = {"seq": 30, "epochs": 25, "samples": 8192, "years": None}
CARAVAN_QUICK = {"seq": 30, "epochs": 2, "samples": 512, "years": 8}


def _split_dates():
    """scripts/caravan.py's split_dates (that script imports QGIS only when it runs algorithms)."""
    spec = importlib.util.spec_from_file_location("_ismoe_caravan_script", os.path.join(REPO, "scripts", "caravan.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.split_dates


# --------------------------------------------------------------------------- cases
def prepare_caravan(data, basin, start, years, seq, workdir, log=print):
    """Caravan basin -> 1x1 rasters -> cube (patch 1). start: first date, or None with `years`: that many
    years before the series' end (None: the whole series)."""
    from ismoe_qgis.data.prepare import prepare_dataset
    from ismoe_qgis.data.tables import caravan_files, caravan_to_rasters
    t0 = time.time()
    if start is None and years:
        end = _last_date(caravan_files(data, basin)["timeseries"])
        start = str(np.datetime64(f"{int(end[:4]) - years}{end[4:]}", "D") + np.timedelta64(1, "D")) \
            if end[4:] != "-02-29" else f"{int(end[:4]) - years}-03-01"
    conv = caravan_to_rasters(data, basin, os.path.join(workdir, basin), start=start)
    factors = {f: [(v, conv["layers"][v]) for v in vs] for f, vs in conv["factors"].items()}
    cube = prepare_dataset(factors, conv["target_path"], patch_size=1, seq_len=seq)
    val_start, test_start = _split_dates()(conv["end"], TEST_YEARS, VAL_YEARS)
    t_from = int(np.searchsorted(cube.dates, np.datetime64(test_start, "D")))
    snow = {}
    if "snow" in cube.factors:
        v = cube.factors["snow"][0]
        xs = cube.x[cube.variables.index(v), :, 0, 0]
        # windows (seq days ending on a test day) in which snow has a signal, i.e. that the model's
        # silent-factor mask does NOT zero (range above SILENT_TOL in normalised units)
        from ismoe_qgis.model.networks import SILENT_TOL
        tol = SILENT_TOL * cube.x_std[cube.variables.index(v)]
        win = np.lib.stride_tricks.sliding_window_view(xs, seq)          # window ending on day seq-1+i
        signal = (np.nanmax(win, axis=1) - np.nanmin(win, axis=1)) >= tol
        signal_test = signal[t_from - seq + 1:]
        snow = {"variable": v, "mean": float(np.nanmean(xs)), "mean_test": float(np.nanmean(xs[t_from:])),
                "days_with_snow_test": float(np.mean(xs[t_from:] > 0)),
                "windows_with_signal_test": float(signal_test.mean())}
        case_signal = signal_test
    else:
        case_signal = None
    log(f"{basin}: {cube.n_dates} days {conv['start']}..{conv['end']}, validation from {val_start}, test from "
        f"{test_start}; prepared in {time.time() - t0:.1f}s")
    return {"kind": "caravan", "basin": basin, "cube": cube, "val_start": val_start, "test_start": test_start,
            "t_from": t_from, "period": [conv["start"], conv["end"]], "snow": snow,
            "obs": cube.y[t_from:, 0], "dates": cube.dates[t_from:], "snow_signal": case_signal}


def _last_date(path):
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 4096))
        lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].split(",", 1)[0].strip()[:10]


def train_settings(case, variant, base):
    """(model type, model options, TrainConfig dict) of a variant in a case; base: the case's sizes."""
    mt, mo, tr = VARIANTS[variant]
    model_opts = dict(mo) if mt == "cnn_lstm" else {"mixture": base["mixture"], **mo}
    from ismoe_qgis.model.train import TrainConfig
    defaults = TrainConfig()
    cfg = {"epochs": base["epochs"], "samples_per_epoch": base["samples"], "val_samples": base["val_samples"],
           "patience": defaults.patience, **tr}
    if variant == "long_training":
        cfg["epochs"] *= 2
        cfg["patience"] *= 2
        if case["kind"] == "caravan":
            cfg["samples_per_epoch"] *= 2
    return mt, model_opts, cfg


def run_one(case, variant, seed, base, device, workdir):
    from ismoe_qgis.core_callbacks import Callbacks
    from ismoe_qgis.model.inference import predict_cube
    from ismoe_qgis.model.io import load_model
    from ismoe_qgis.model.metrics import metrics
    from ismoe_qgis.model.networks import ModelConfig
    from ismoe_qgis.model.train import TrainConfig, train

    mt, mo, tr = train_settings(case, variant, base)
    import torch
    tr.update(seed=seed, device=str(device), val_start=str(case["val_start"]), test_start=str(case["test_start"]),
              threads=torch.get_num_threads())     # the benchmark's --threads, not train()'s own choice
    if case["kind"] == "demo":
        # the demo case runs through interpretability.py's own code path
        epochs, samples, val_samples = tr.pop("epochs"), tr.pop("samples_per_epoch"), tr.pop("val_samples")
        batch_size, lr = tr.pop("batch_size", TrainConfig.batch_size), tr.pop("lr", TrainConfig.lr)
        r = interp.train_demo_model(case, mt, seed, epochs, samples, device, workdir, model_options=mo,
                                    train_overrides=tr, val_samples=val_samples, batch_size=batch_size, lr=lr,
                                    name=f"demo_{variant}")
        out = {"cc": {rn: s["cc"] for rn, s in r["regions"].items()}, "no_signal_max": r["no_signal_max"],
               "no_signal": r["no_signal"], "planted_top2": r["planted_top2"], "best_epoch": r["best_epoch"],
               "epochs_run": r["epochs_run"], "train_seconds": r["train_seconds"],
               "predict_seconds": r["predict_seconds"],
               "mean_weights": {rn: s["mean_weights"] for rn, s in r["regions"].items()},
               "train_config": r["train_config"], "model_options": r["model_options"]}
        out["cc_min_region"] = min(out["cc"].values())
        out["cc_mean_regions"] = float(np.mean(list(out["cc"].values())))
        return out
    tr = interp.checked_options(TrainConfig, tr, variant)
    mo = interp.checked_options(ModelConfig, mo, variant)
    cfg = TrainConfig(**tr)
    path = os.path.join(workdir, f"{case['basin']}_{variant}_s{seed}.pt")
    t0 = time.time()
    if "train_cube" not in case:
        case["train_cube"] = interp.training_cube(case["cube"], case["test_start"])
    res = train(case["train_cube"], path, mt, cfg, mo or None, Callbacks(log=lambda m: None))
    secs = time.time() - t0
    model, _, _ = load_model(path, device)
    t1 = time.time()
    sm, w = predict_cube(model, case["cube"], t_from=case["t_from"], device=device, time_chunk=256)
    psecs = time.time() - t1
    est, obs = sm[:, 0, 0], case["obs"]
    met = metrics(obs, est)
    ok = np.isfinite(obs) & np.isfinite(est)
    alpha = float(np.std(est[ok]) / np.std(obs[ok])) if ok.sum() > 2 and np.std(obs[ok]) > 0 else float("nan")
    out = {"cc": met["cc"], "rmse": met["rmse"], "kge": met["kge"], "alpha": alpha, "bias": met["bias"],
           "n": met["n"], "best_epoch": res["best_epoch"], "epochs_run": len(res["history"]),
           "train_seconds": round(secs, 1), "predict_seconds": round(psecs, 1), "val_cc": res.get("val_cc"),
           "train_config": dataclasses.asdict(cfg), "model_options": mo, "snow_weight": None}
    if "snow" in model.output_names:
        ws = w[model.output_names.index("snow"), :, 0, 0]
        djf = np.isin(case["dates"].astype("datetime64[M]").astype(int) % 12, (11, 0, 1))
        out["snow_weight"] = float(np.nanmean(ws))
        out["snow_weight_djf"] = float(np.nanmean(ws[djf])) if djf.any() else None
        sig = case.get("snow_signal")
        if sig is not None and len(sig) == len(ws):
            # split by whether the mask can act: windows without snow signal must have weight 0 when
            # mask_silent is on; the rest is the router's (or the additive form's) own doing
            out["snow_weight_signal"] = float(np.nanmean(ws[sig])) if sig.any() else None
            out["snow_weight_no_signal"] = float(np.nanmean(ws[~sig])) if (~sig).any() else None
        out["mean_weights"] = {f: float(np.nanmean(w[e])) for e, f in enumerate(model.output_names)}
    return out


# --------------------------------------------------------------------------- aggregation
DEMO_METRICS = ("cc_min_region", "cc_mean_regions", "no_signal_max", "planted_top2", "best_epoch", "train_seconds")
CARAVAN_METRICS = ("cc", "rmse", "kge", "alpha", "snow_weight", "snow_weight_djf", "snow_weight_signal",
                   "snow_weight_no_signal", "best_epoch", "train_seconds")


def _stats(vals):
    v = np.asarray([x for x in vals if x is not None and np.isfinite(x)], float)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def _metric_values(run, key, case_kind):
    if case_kind == "demo" and key.startswith("cc_") and key not in ("cc_min_region", "cc_mean_regions"):
        return run["cc"].get(key[3:])
    return run.get(key)


def summarise_case(case_res):
    """Mean/std over seeds per variant and the difference to base (per-seed paired)."""
    kind = case_res["kind"]
    keys = list(DEMO_METRICS if kind == "demo" else CARAVAN_METRICS)
    if kind == "demo":
        rnames = None
        for v in case_res["variants"].values():
            for r in v["per_seed"].values():
                if "error" not in r:
                    rnames = list(r["cc"])
                    break
            if rnames:
                break
        keys = [f"cc_{r}" for r in (rnames or [])] + keys
    base = case_res["variants"].get("base", {}).get("per_seed", {})
    for name, v in case_res["variants"].items():
        ok = {s: r for s, r in v["per_seed"].items() if "error" not in r}
        summ = {"seeds_ok": sorted(ok), "errors": {s: r["error"] for s, r in v["per_seed"].items() if "error" in r}}
        for k in keys:
            summ[k] = _stats([_metric_values(r, k, kind) for r in ok.values()])
            if name != "base" and summ[k]["mean"] is not None:
                pairs = [(_metric_values(r, k, kind), _metric_values(base[s], k, kind)) for s, r in ok.items()
                         if s in base and "error" not in base[s]]
                d = [a - b for a, b in pairs if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)]
                if d:
                    da = np.asarray(d, float)
                    se = float(da.std(ddof=1) / np.sqrt(len(da))) if len(da) > 1 else None
                    summ[k]["delta_base"] = float(da.mean())
                    summ[k]["delta_se"] = se
                    summ[k]["delta_signif"] = bool(se is not None and abs(da.mean()) > 2 * se)
        v["summary"] = summ


def case_verdict(case_res):
    """Variants ordered by their change of the main CC vs base; the snow check for the snow-poor basin."""
    key = "cc_min_region" if case_res["kind"] == "demo" else "cc"
    rows = []
    for name, v in case_res["variants"].items():
        s = v.get("summary", {}).get(key, {})
        if name != "base" and s.get("delta_base") is not None:
            rows.append({"variant": name, "delta_cc": s["delta_base"], "se": s.get("delta_se"),
                         "signif": s.get("delta_signif")})
    rows.sort(key=lambda r: -r["delta_cc"])
    out = {"cc_key": key, "vs_base": rows,
           "better_than_base": [r["variant"] for r in rows if r["delta_cc"] > 0 and r["signif"]],
           "worse_than_base": [r["variant"] for r in rows if r["delta_cc"] < 0 and r["signif"]]}
    if case_res["kind"] == "caravan":
        out["snow_weight_max_over_variants"] = max(
            (v["summary"]["snow_weight"]["mean"] for v in case_res["variants"].values()
             if v.get("summary", {}).get("snow_weight", {}).get("mean") is not None), default=None)
    return out


def snow_check(results):
    """Which basin has less snow (mean of the snow variable over the whole series), and whether
    the ISMoE variants' mean snow weight there stays <= SNOW_MAX."""
    basins = {c: r for c, r in results["cases"].items() if r.get("kind") == "caravan" and r.get("snow")}
    if not basins:
        return None
    poor = min(basins, key=lambda c: basins[c]["snow"]["mean"])
    out = {"snow_mean": {c: r["snow"]["mean"] for c, r in basins.items()},
           "snow_mean_test": {c: r["snow"]["mean_test"] for c, r in basins.items()},
           "snow_poor_basin": poor, "limit": SNOW_MAX, "per_variant": {}}
    for name, v in basins[poor]["variants"].items():
        runs = [r for r in v["per_seed"].values() if "error" not in r and r.get("snow_weight") is not None]
        if runs:
            worst = max(r["snow_weight"] for r in runs)
            out["per_variant"][name] = {"worst_seed": worst, "ok": worst <= SNOW_MAX}
    return out


# --------------------------------------------------------------------------- output
def _f(x, fmt=".3f"):
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def _ms(s, fmt=".3f"):
    if not s or s.get("mean") is None:
        return "-"
    return f"{format(s['mean'], fmt)} +- {format(s['std'], fmt)}" if s["n"] > 1 else format(s["mean"], fmt)


def _delta(s, fmt="+.3f"):
    if not s or s.get("delta_base") is None:
        return ""
    return format(s["delta_base"], fmt) + ("*" if s.get("delta_signif") else "")


def case_table(cname, c, md=False):
    """Rows of one case's table (text or markdown)."""
    if c.get("error"):
        return [f"{cname}: ERROR {c['error']}"]
    if c["kind"] == "demo":
        rn = [k[3:] for k in next((v["summary"] for v in c["variants"].values() if "summary" in v), {})
              if k.startswith("cc_") and k not in ("cc_min_region", "cc_mean_regions")]
        cols = [(f"CC {r}", f"cc_{r}", ".3f") for r in rn] + [("min CC", "cc_min_region", ".3f"),
                                                             ("no-signal", "no_signal_max", ".3f"),
                                                             ("top-2", "planted_top2", ".1f"),
                                                             ("best ep", "best_epoch", ".1f"),
                                                             ("s", "train_seconds", ".0f")]
        dkey = "cc_min_region"
        head = f"{cname}: test from {c['test_start']}"
    else:
        cols = [("CC", "cc", ".3f"), ("RMSE", "rmse", ".4f"), ("KGE", "kge", ".3f"), ("alpha", "alpha", ".3f"),
                ("snow w", "snow_weight", ".3f"), ("snow w DJF", "snow_weight_djf", ".3f"),
                ("snow w | signal", "snow_weight_signal", ".3f"),
                ("best ep", "best_epoch", ".1f"), ("s", "train_seconds", ".0f")]
        dkey = "cc"
        sn = c.get("snow", {})
        head = (f"{cname}: {c['period'][0]}..{c['period'][1]}, validation from {c['val_start']}, test from "
                f"{c['test_start']}; mean snow {_f(sn.get('mean'), '.3g')} (test {_f(sn.get('mean_test'), '.3g')}, "
                f"snow on {_f(sn.get('days_with_snow_test'), '.0%')} of the test days, snow signal in "
                f"{_f(sn.get('windows_with_signal_test'), '.0%')} of the test windows)")
    names = ["variant"] + [h for h, _, _ in cols] + [f"d{'CC' if dkey == 'cc' else 'minCC'} vs base"]
    rows = []
    for vname, v in c["variants"].items():
        s = v.get("summary", {})
        if not s.get("seeds_ok"):
            err = next(iter(s.get("errors", {}).values()), "not run")
            rows.append([vname, "ERROR: " + err[:160]])
            continue
        row = [vname] + [_ms(s.get(k), fmt) for _, k, fmt in cols] + [_delta(s.get(dkey))]
        rows.append(row)
        for seed, err in s.get("errors", {}).items():
            rows.append([f"  seed {seed}", "ERROR: " + err[:160]])
    if md:
        out = [f"### {head}", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return out
    widths = [max(len(str(r[i])) for r in [names] + [r for r in rows if len(r) == len(names)]) + 2
              for i in range(len(names))]
    out = [head, "".join(f"{n:>{w}}" if i else f"{n:<{w}}" for i, (n, w) in enumerate(zip(names, widths)))]
    for r in rows:
        if len(r) != len(names):
            out.append(f"{r[0]:<{widths[0]}}{r[1]}")
        else:
            out.append("".join(f"{x:>{w}}" if i else f"{x:<{w}}" for i, (x, w) in enumerate(zip(r, widths))))
    return out


def format_all(results, md=False):
    cfg = results["config"]
    lines = []
    if md:
        lines += ["# Ablation: which choice costs accuracy", ""]
    lines.append(f"seeds {','.join(map(str, cfg['seeds']))}; base mixture {cfg['mixture']}; {cfg['device']}, "
                 f"{cfg['torch_threads']} torch threads; load average {results.get('loadavg_start')} -> "
                 f"{results.get('loadavg_end')}" + ("; QUICK smoke sizes" if cfg["quick"] else ""))
    lines.append("mean +- std over seeds; d = mean of the per-seed differences to base "
                 "(* = more than 2 standard errors)")
    for cname, c in results["cases"].items():
        lines.append("")
        lines += case_table(cname, c, md)
        vd = c.get("verdict")
        if vd:
            lines.append("")
            lines.append(f"{'- ' if md else ''}CC vs base ({vd['cc_key']}): " + (", ".join(
                f"{r['variant']} {r['delta_cc']:+.3f}{'*' if r['signif'] else ''}" for r in vd["vs_base"]) or "-"))
            if vd["better_than_base"]:
                lines.append(f"{'- ' if md else ''}base's choice costs accuracy against: "
                             + ", ".join(vd["better_than_base"]))
    sc = results.get("snow_check")
    if sc:
        lines.append("")
        lines.append(f"{'- ' if md else ''}snow: mean snow variable " + ", ".join(
            f"{b} {v:.3g}" for b, v in sc["snow_mean"].items()) + f"; the snow-poor basin is {sc['snow_poor_basin']}; "
            f"its mean snow weight (worst seed, limit {sc['limit']}): " + (", ".join(
                f"{n} {d['worst_seed']:.3f} {'ok' if d['ok'] else 'FAIL'}" for n, d in sc["per_variant"].items())
                or "-"))
    return "\n".join(lines)


def write_outputs(results, out):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".part"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=interp._json_default)
    os.replace(tmp, out)
    with open(os.path.splitext(out)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(format_all(results, md=True) + "\n")


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: demo and/or Caravan basin ids")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", default=None, help="training seeds, comma-separated (default 42,43,44; --quick: 42)")
    ap.add_argument("--mixture", default="convex", help="the base's mixture form (convex, scaled, additive, gated)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every case (default: demo 10, Caravan 25)")
    ap.add_argument("--samples", type=int, default=None, help="training windows per epoch (default 8192)")
    ap.add_argument("--start", default=None, help="first Caravan date (YYYY-MM-DD; default: the whole series)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="Caravan folder (default ../shared/data/caravan)")
    ap.add_argument("--region", default=None, help="an existing demo region folder (default: generate one)")
    ap.add_argument("--region-seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (default: the CPUs available, 1 when the load average fills them)")
    ap.add_argument("--out", default="out/bench/ablation.json")
    a = ap.parse_args(argv)
    cases = interp._csv(a.cases)
    variants = interp._csv(a.variants)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    if "base" not in variants:
        variants = ["base"] + variants          # the differences need it
    seeds = interp._csv(a.seeds, int) if a.seeds is not None else ([42] if a.quick else [42, 43, 44])
    if not seeds:
        ap.error("--seeds: give at least one seed")

    import torch
    from ismoe_qgis.model.device import resolve_device
    la0 = interp._loadavg()
    threads, why = interp.pick_threads(a.threads)
    dev = resolve_device(a.device, print)
    demo_size = dict(DEMO_QUICK if a.quick else DEMO)
    car_size = dict(CARAVAN_QUICK if a.quick else CARAVAN)
    for d in (demo_size, car_size):
        if a.epochs:
            d["epochs"] = a.epochs
        if a.samples:
            d["samples"] = a.samples
        d["mixture"] = a.mixture
    from ismoe_qgis.model.train import TrainConfig
    car_size.setdefault("val_samples", TrainConfig().val_samples)
    results = {"created": _dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:] if argv is None
               else list(argv),
               "config": {"cases": cases, "variants": variants, "seeds": seeds, "mixture": a.mixture,
                          "quick": a.quick, "device": str(dev), "torch": torch.__version__,
                          "torch_threads": threads, "torch_threads_reason": why, "demo": demo_size, "caravan": car_size,
                          "caravan_start": a.start, "test_years": TEST_YEARS, "val_years": VAL_YEARS,
                          "variant_definitions": {k: {"model_type": m, "model": mo, "train": tr}
                                                  for k, (m, mo, tr) in VARIANTS.items()}},
               "loadavg_start": la0, "cases": {}}
    workdir = tempfile.mkdtemp(prefix="ismoe_ablation_")
    t_all = time.time()
    for cname in cases:
        t_case = time.time()
        try:
            if cname == "demo":
                case = interp.prepare_demo(a.region, demo_size["size"], demo_size["years"], a.region_seed,
                                           demo_size["patch"], demo_size["seq"])
                case["kind"] = "demo"
                base = demo_size
                info = {"kind": "demo", "test_start": str(case["test_start"]), "val_start": str(case["val_start"]),
                        "no_signal_silent_fraction": case["silent_fraction"]}
            else:
                case = prepare_caravan(a.data, cname, a.start, car_size["years"] if not a.start else None,
                                       car_size["seq"], workdir)
                base = car_size
                info = {"kind": "caravan", "period": case["period"], "val_start": case["val_start"],
                        "test_start": case["test_start"], "snow": case["snow"]}
        except Exception as e:
            results["cases"][cname] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
            print(f"{cname}: ERROR {results['cases'][cname]['error']}", flush=True)
            write_outputs(results, a.out)
            continue
        cres = results["cases"][cname] = {**info, "variants": {}}
        for vname in variants:
            per_seed = {}
            cres["variants"][vname] = {"per_seed": per_seed}
            for s in seeds:
                try:
                    r = run_one(case, vname, s, base, dev, workdir)
                    msg = (f"CC min {r['cc_min_region']:.3f}, no-signal {_f(r['no_signal_max'])}"
                           if case["kind"] == "demo" else
                           f"CC {r['cc']:.3f}, KGE {r['kge']:.3f}, alpha {r['alpha']:.3f}, "
                           f"snow w {_f(r['snow_weight'])}")
                    print(f"{cname} {vname} seed {s}: {msg}; best epoch {r['best_epoch']}/{r['epochs_run']}, "
                          f"{r['train_seconds']:.0f}s", flush=True)
                except Exception as e:  # report and go on
                    r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
                    print(f"{cname} {vname} seed {s}: ERROR {r['error']}", flush=True)
                per_seed[str(s)] = r
                summarise_case(cres)
                write_outputs(results, a.out)
        cres["verdict"] = case_verdict(cres)
        cres["seconds"] = round(time.time() - t_case, 1)
        del case
    results["snow_check"] = snow_check(results)
    results["seconds"] = round(time.time() - t_all, 1)
    results["loadavg_end"] = interp._loadavg()
    write_outputs(results, a.out)
    print()
    print(format_all(results))
    print(f"\nwritten {a.out} and {os.path.splitext(a.out)[0]}.md in {results['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

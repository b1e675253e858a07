"""Evaluation report: CSV/JSON rows and values, self-contained HTML with decodable PNGs."""
import base64
import csv
import inspect
import json
import math
import re
import threading

import numpy as np
import pytest

from ismoe_qgis.model import report
from ismoe_qgis.model.metrics import metrics, season_of
from ismoe_qgis.model.report import CSV_COLUMNS, evaluation_rows, write_evaluation

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = ("ismoe", "cnn_lstm", "ERA5-Land swvl1")


def _synthetic(seed=0):
    rng = np.random.default_rng(seed)
    T, N = 400, 5
    dates = np.datetime64("2019-11-01") + np.arange(T)
    phase = 2 * np.pi * np.arange(T) / 365.25
    obs = 0.25 + 0.08 * np.sin(phase)[:, None] + rng.normal(0, 0.02, (T, N))
    obs[rng.random((T, N)) < 0.1] = np.nan
    obs[:, 4] = np.nan
    obs[[10, 50], 4] = 0.3            # location with 2 observations only -> NaN metrics
    ismoe = obs + rng.normal(0, 0.015, (T, N))
    cnn = 0.9 * obs + 0.03 + rng.normal(0, 0.03, (T, N))
    ref = obs + 0.04 + rng.normal(0, 0.04, (T, N))
    ref[rng.random((T, N)) < 0.3] = np.nan   # gappy product
    # the models are complete grids: fill where obs is missing too
    for a in (ismoe, cnn):
        a[np.isnan(a)] = 0.25
    return {
        "dates": dates,
        "obs": obs,
        "estimates": {"ismoe": ismoe, "cnn_lstm": cnn, "ERA5-Land swvl1": ref},
        "location_ids": ["NQ01", "NQ02", "MQ01", "pixel 3,4", "MQ09"],
        "regions": ["naqu", "naqu", "maqu", None, "maqu"],
        "references": ["ERA5-Land swvl1"],
        "notes": ["synthetic test data"],
    }


def _pngs(html_text):
    payloads = re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)', html_text)
    return [base64.b64decode(p, validate=True) for p in payloads]


def _num(s):
    return math.nan if s == "" else float(s)


def test_report_files_rows_and_values(tmp_path):
    res = _synthetic()
    out = {}

    # the report runs in a Processing worker thread: do the same here
    def work():
        out["r"] = write_evaluation(tmp_path / "ev", res)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    r = out["r"]
    d = tmp_path / "ev"
    assert r["csv"] == str(d / "metrics.csv")
    for name in ("metrics.csv", "metrics.json", "report.html", "location_skill.csv"):
        assert (d / name).is_file()

    # --- CSV rows
    with open(d / "metrics.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    per_model = 1 + 3 + 5 + 2 + 4  # overall, per-location median/p25/p75, 5 locations, 2 regions, 4 seasons
    assert len(rows) == 3 * per_model
    assert [r_["model"] for r_ in rows[::per_model]] == list(MODELS)
    kinds = [(r_["group_kind"], r_["group"]) for r_ in rows[:per_model]]
    assert kinds == ([("overall", "all")] + [("per_location", s) for s in ("median", "p25", "p75")]
                     + [("location", i) for i in res["location_ids"]]
                     + [("region", "naqu"), ("region", "maqu")]
                     + [("season", s) for s in ("DJF", "MAM", "JJA", "SON")])
    by = {(r_["model"], r_["group_kind"], r_["group"]): r_ for r_ in rows}

    # same samples for every model: obs and all three estimates finite
    obs = res["obs"]
    mask = np.isfinite(obs)
    for a in res["estimates"].values():
        mask &= np.isfinite(a)
    o = np.where(mask, obs, np.nan)
    for name, est in res["estimates"].items():
        want = metrics(o, est)
        got = by[name, "overall", "all"]
        assert int(got["n"]) == int(mask.sum())
        for k in ("cc", "rmse", "ubrmse", "bias", "kge"):
            assert _num(got[k]) == pytest.approx(want[k], rel=1e-9), (name, k)
    # a season row and a region row, checked independently
    djf = season_of(res["dates"]) == "DJF"
    want = metrics(o[djf], res["estimates"]["cnn_lstm"][djf])
    assert _num(by["cnn_lstm", "season", "DJF"]["rmse"]) == pytest.approx(want["rmse"], rel=1e-9)
    assert int(by["cnn_lstm", "season", "DJF"]["n"]) == want["n"]
    want = metrics(o[:, [2, 4]], res["estimates"]["ismoe"][:, [2, 4]])
    assert _num(by["ismoe", "region", "maqu"]["kge"]) == pytest.approx(want["kge"], rel=1e-9)
    # location with < 3 samples: empty CSV fields
    sparse = by["ismoe", "location", "MQ09"]
    assert sparse["cc"] == "" and sparse["rmse"] == "" and int(sparse["n"]) <= 2
    # sanity of the synthetic setup: ismoe is the best model
    assert _num(by["ismoe", "overall", "all"]["cc"]) > _num(by["cnn_lstm", "overall", "all"]["cc"])

    # --- JSON: same rows, NaN as null, metadata
    doc = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    assert doc["columns"] == list(CSV_COLUMNS)
    assert doc["models"] == ["ismoe", "cnn_lstm"]
    assert doc["references"] == ["ERA5-Land swvl1"]
    assert doc["same_samples"] is True
    assert doc["period"] == ["2019-11-01", str(res["dates"][-1])]
    assert doc["location_ids"] == res["location_ids"]
    assert len(doc["rows"]) == len(rows)
    for jr, cr in zip(doc["rows"], rows):
        assert (jr["model"], jr["group_kind"], jr["group"]) == (
            cr["model"], cr["group_kind"], cr["group"])
        assert jr["n"] == int(cr["n"])
        for k in ("cc", "rmse", "ubrmse", "bias", "kge", "anomaly_cc"):
            if cr[k] == "":
                assert jr[k] is None
            else:
                assert jr[k] == pytest.approx(float(cr[k]), rel=1e-12)
    # returned rows agree with the files
    assert len(r["rows"]) == len(rows)

    # --- HTML
    text = (d / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<table" in text
    for name in MODELS:
        assert name in text
    for label in ("CC", "RMSE", "ubRMSE", "KGE", "DJF", "naqu", "NQ01", "Kling"):
        assert label in text
    pngs = _pngs(text)
    assert len(pngs) >= 3   # season metrics, time series, scatter (+ region chart)
    for png in pngs:
        assert png.startswith(PNG_SIGNATURE)
    assert "src=\"http" not in text and "<script" not in text   # self-contained
    assert "Seasonal importance" not in text   # optional section, not asked for


def test_seasonal_importance_section(tmp_path):
    res = _synthetic(1)
    csv_path = tmp_path / "importance.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["region", "period_kind", "period", "factor", "mean_weight", "n"])
        for region in ("naqu", "maqu"):
            for m in range(1, 13):
                for factor, wt in (("snow", 0.1 + 0.02 * m), ("lake", 0.5), ("wind", 0.4 - 0.02 * m)):
                    w.writerow([region, "month", m, factor, wt, 30])
            for s in ("DJF", "MAM", "JJA", "SON"):
                for factor, wt in (("snow", 0.2), ("lake", 0.5), ("wind", 0.3)):
                    w.writerow([region, "season", s, factor, wt, 90])
        w.writerow(["naqu", "month", "13", "snow", "not a number", ""])  # tolerated, dropped
    res["seasonal_importance"] = str(csv_path)
    with_imp = write_evaluation({"html": tmp_path / "b" / "report.html"}, res)
    text = open(with_imp["html"], encoding="utf-8").read()
    assert "Seasonal importance" in text
    # season metrics, region metrics, time series, scatter + the monthly importance chart
    pngs = _pngs(text)
    assert len(pngs) == 5 and all(p.startswith(PNG_SIGNATURE) for p in pngs)
    assert "lake" in text and "JJA" in text
    assert "could not" not in text

    # an unreadable importance source never breaks the report
    res["seasonal_importance"] = str(tmp_path / "missing.csv")
    r = write_evaluation({"html": tmp_path / "c" / "r.html"}, res)
    assert r["csv"] is None and r["json"] is None
    text = open(r["html"], encoding="utf-8").read()
    assert "seasonal importance could not be read" in text
    assert not (tmp_path / "c" / "metrics.csv").exists()


def test_read_importance_is_tolerant():
    rows = report.read_importance([
        {"Region": "", "period_kind": "Month", "period": "Jan", "factor": "snow", "mean_weight": "0.3"},
        {"region": "x", "period_kind": "season", "period": "DJF", "factor": "", "mean_weight": 1},
        {"region": "x", "period_kind": "season", "period": "DJF", "factor": "wind"},
        "not a row",
    ])
    assert rows == [{"region": "all", "period_kind": "month", "period": "Jan", "factor": "snow",
                     "mean_weight": 0.3, "n": None, "measure": "weight"}]     # no measure: the weights


def test_own_samples_and_bad_input(tmp_path):
    res = _synthetic(2)
    res["same_samples"] = False
    rows = evaluation_rows(res)
    n = {r["model"]: r["n"] for r in rows if r["group_kind"] == "overall"}
    assert n["ismoe"] == n["cnn_lstm"] > n["ERA5-Land swvl1"]

    bad = _synthetic(3)
    bad["estimates"]["SMAP L3"] = np.full_like(bad["obs"], np.nan)
    with pytest.raises(ValueError, match="SMAP L3"):
        write_evaluation(tmp_path / "bad", bad)
    bad = _synthetic(3)
    bad["estimates"]["ismoe"] = bad["estimates"]["ismoe"][:, :3]
    with pytest.raises(ValueError, match="shape"):
        evaluation_rows(bad)
    bad = _synthetic(3)
    bad["references"] = ["SMAP"]
    with pytest.raises(ValueError, match="SMAP"):
        evaluation_rows(bad)


def test_no_pyplot():
    # pyplot keeps global state and picks a GUI backend: the report must not use it
    src = inspect.getsource(report)
    assert not re.search(r"import\s+matplotlib\.pyplot|from\s+matplotlib\s+import\s+pyplot", src)
    assert "plt." not in src


def _with_climatology(res, train_days=365):
    """The synthetic results with a climatology (the noise-free seasonal cycle) and station
    coordinates."""
    T, N = res["obs"].shape
    phase = 2 * np.pi * np.arange(T) / 365.25
    res["climatology"] = np.repeat((0.25 + 0.08 * np.sin(phase))[:, None], N, axis=1)
    res["climatology"][:, 3] = np.nan           # a location without a training climatology
    c = res["climatology"]
    res["estimate_climatology"] = {"ismoe": c, "cnn_lstm": 0.9 * c + 0.03, "ERA5-Land swvl1": c + 0.04}
    res["location_xy"] = np.array([[200.0, 50.0], [210.0, 55.0], [190.0, 40.0], [205.0, 45.0], [195.0, 60.0]])
    res["location_kind"] = "stations"
    return res


def test_per_location_skill_leads_the_report(tmp_path):
    """Per-location rows, the per-location CSV and the headline table (before the pooled one), with
    values checked against numpy on the common samples."""
    res = _with_climatology(_synthetic(4))
    r = write_evaluation(tmp_path / "ev", res)
    d = tmp_path / "ev"
    obs = res["obs"]
    mask = np.isfinite(obs)
    for a in res["estimates"].values():
        mask &= np.isfinite(a)
    clim = res["climatology"]
    want = {}
    for name, est in res["estimates"].items():
        ce = res["estimate_climatology"][name]
        cc, acc, bias, ub = {}, {}, {}, {}
        for j, loc in enumerate(res["location_ids"]):
            ok = mask[:, j]
            if ok.sum() < 30:
                continue
            o, e = obs[ok, j], est[ok, j]
            cc[loc] = np.corrcoef(o, e)[0, 1]
            bias[loc] = e.mean() - o.mean()
            ub[loc] = np.sqrt(np.mean(((e - e.mean()) - (o - o.mean())) ** 2))
            if np.isfinite(clim[ok, j]).all():
                acc[loc] = np.corrcoef(o - clim[ok, j], e - ce[ok, j])[0, 1]
        want[name] = (cc, acc, bias, ub)

    # location_skill.csv: every location of every estimate, empty metrics below 30 days
    with open(d / "location_skill.csv", newline="", encoding="utf-8") as f:
        loc_rows = list(csv.DictReader(f))
    assert tuple(loc_rows[0]) == report.LOCATION_CSV_COLUMNS
    assert len(loc_rows) == 3 * 5
    for lr in loc_rows:
        cc, acc, bias, ub = want[lr["model"]]
        loc = lr["location"]
        j = res["location_ids"].index(loc)
        assert int(lr["n_days"]) == int(mask[:, j].sum())
        assert float(lr["x"]) == res["location_xy"][j, 0] and float(lr["y"]) == res["location_xy"][j, 1]
        if loc not in cc:
            assert lr["qualified"] == "0" and lr["cc"] == "" and lr["bias"] == ""
            continue
        assert lr["qualified"] == "1"
        assert float(lr["cc"]) == pytest.approx(cc[loc], rel=1e-9)
        assert float(lr["bias"]) == pytest.approx(bias[loc], rel=1e-9)
        assert float(lr["ubrmse"]) == pytest.approx(ub[loc], rel=1e-9)
        if loc in acc:
            assert float(lr["anomaly_cc"]) == pytest.approx(acc[loc], rel=1e-9)
        else:
            assert lr["anomaly_cc"] == "" and int(lr["n_anomaly_days"]) == 0
    assert {lr["location"] for lr in loc_rows if lr["qualified"] == "1"} == {"NQ01", "NQ02", "MQ01", "pixel 3,4"}

    # metrics.csv: per_location median / p25 / p75 rows (n = qualified locations)
    with open(d / "metrics.csv", newline="", encoding="utf-8") as f:
        by = {(x["model"], x["group_kind"], x["group"]): x for x in csv.DictReader(f)}
    for name, (cc, acc, bias, ub) in want.items():
        p25, med, p75 = np.percentile(list(cc.values()), [25, 50, 75])
        assert _num(by[name, "per_location", "median"]["cc"]) == pytest.approx(med, rel=1e-9)
        assert _num(by[name, "per_location", "p25"]["cc"]) == pytest.approx(p25, rel=1e-9)
        assert _num(by[name, "per_location", "p75"]["cc"]) == pytest.approx(p75, rel=1e-9)
        assert int(by[name, "per_location", "median"]["n"]) == 4
        assert _num(by[name, "per_location", "median"]["anomaly_cc"]) == pytest.approx(
            np.median(list(acc.values())), rel=1e-9)
        assert _num(by[name, "per_location", "median"]["bias"]) == pytest.approx(np.median(list(bias.values())),
                                                                                  rel=1e-9)
        assert _num(by[name, "per_location", "median"]["ubrmse"]) == pytest.approx(np.median(list(ub.values())),
                                                                                    rel=1e-9)
        # pooled anomaly CC: the anomalies of all common samples with a climatology
        ok = mask & np.isfinite(clim)
        o = obs[ok] - clim[ok]
        e = res["estimates"][name][ok] - res["estimate_climatology"][name][ok]
        assert _num(by[name, "overall", "all"]["anomaly_cc"]) == pytest.approx(np.corrcoef(o, e)[0, 1], rel=1e-9)
    # the anomaly CC removes the seasonal cycle: lower than the raw per-location CC here
    assert _num(by["ismoe", "per_location", "median"]["anomaly_cc"]) < _num(by["ismoe", "per_location", "median"]["cc"])

    # metrics.json: the summary per estimate
    doc = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    ls = doc["location_skill"]
    assert ls["min_days"] == 30
    s = ls["estimates"]["cnn_lstm"]
    assert (s["n_locations"], s["n_qualified"], s["n_anomaly"], s["n_no_climatology"]) == (5, 4, 3, 1)
    assert s["cc"]["median"] == pytest.approx(np.median(list(want["cnn_lstm"][0].values())), rel=1e-9)
    assert r["location_skill"]["ismoe"]["n_qualified"] == 4

    # HTML: the per-location table comes first, before the pooled table, with a map of the CC
    text = (d / "report.html").read_text(encoding="utf-8")
    i_loc = text.index("Per-location skill")
    i_pooled = text.index("Overall, pooled over all samples")
    assert i_loc < i_pooled < text.index("By location")
    assert text.index('<table class="headline">') < text.index("<table>")   # the first table
    head = text[i_loc:i_pooled]
    med = np.median(list(want["ismoe"][0].values()))
    assert f"{med:.3f}" in head and "4 / 5" in head and "anomaly CC" in head
    assert "1 location(s) have fewer than 30 scored days" in head
    assert "ismoe: 1 of 4 location(s) without 30 days of defined training climatologies" in head
    assert "<th>anomaly locations</th>" in head
    assert 'alt="map of the per-location CC"' in head
    assert _pngs(head)[0].startswith(PNG_SIGNATURE)
    # an estimate without its own climatology has no anomaly CC (not the observed one removed from it)
    del res["estimate_climatology"]["cnn_lstm"]
    rows = evaluation_rows(res)
    row = next(x for x in rows if x["model"] == "cnn_lstm" and x["group_kind"] == "per_location")
    assert math.isnan(row["anomaly_cc"]) and np.isfinite(row["cc"])
    assert all(math.isnan(x["anomaly_cc"]) for x in rows if x["model"] == "cnn_lstm")
    # min_location_days is honoured
    res["min_location_days"] = 400
    rows = evaluation_rows(res)
    assert next(x for x in rows if x["group_kind"] == "per_location")["n"] == 0


def test_grid_target_cc_map_is_a_raster(tmp_path):
    res = _synthetic(5)
    N = res["obs"].shape[1]
    rows, cols = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 0, 2])
    transform = [100.0, 0.1, 0.0, 30.0, 0.0, -0.1]
    res["location_xy"] = np.stack([100.0 + (cols + 0.5) * 0.1, 30.0 - (rows + 0.5) * 0.1], axis=1)
    res["location_kind"] = "grid"
    res["location_grid"] = {"rows": rows, "cols": cols, "transform": transform}
    img, extent = report._grid_image(report._Eval(res), np.arange(N, dtype=float))
    assert img.shape == (3, 3) and extent == pytest.approx((100.0, 100.3, 29.7, 30.0))
    assert img[0, 1] == 1.0 and img[2, 2] == 4.0 and np.isnan(img[1, 0])
    r = write_evaluation({"html": tmp_path / "g.html"}, res)
    text = open(r["html"], encoding="utf-8").read()
    assert 'alt="map of the per-location CC"' in text and "could not" not in text

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
    for name in ("metrics.csv", "metrics.json", "report.html"):
        assert (d / name).is_file()

    # --- CSV rows
    with open(d / "metrics.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    per_model = 1 + 5 + 2 + 4  # overall, 5 locations, 2 regions, 4 seasons
    assert len(rows) == 3 * per_model
    assert [r_["model"] for r_ in rows[::per_model]] == list(MODELS)
    kinds = [(r_["group_kind"], r_["group"]) for r_ in rows[:per_model]]
    assert kinds == ([("overall", "all")] + [("location", i) for i in res["location_ids"]]
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
        for k in ("cc", "rmse", "ubrmse", "bias", "kge"):
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
                     "mean_weight": 0.3, "n": None}]


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

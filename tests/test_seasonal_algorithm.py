"""ismoe:seasonalimportance through processing.run (and qgis_process): PNG, HTML/SVG and CSV."""
from pathlib import Path

import numpy as np
import pytest
from rasterio.warp import transform_geom

from ismoe_qgis.model import importance as imp
from prediction_fixtures import CRS, X0, Y0, make_prediction_folder

ALG = "ismoe:seasonalimportance"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def pred(tmp_path):
    folder = tmp_path / "pred"
    arrays = make_prediction_folder(str(folder))
    arrays["path"] = str(folder)
    return arrays


def regions_layer(boxes, crs="EPSG:4326"):
    """Memory polygon layer in `crs` from {name: (x0, y0, x1, y1) in the raster CRS}."""
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer("Polygon?crs=%s&field=name:string" % crs, "regions", "memory")
    feats = []
    for name, (x0, y0, x1, y1) in boxes.items():
        geom = transform_geom(CRS, crs, {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1),
                                                                             (x0, y1), (x0, y0)]]})
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromWkt("POLYGON((%s))" % ",".join("%r %r" % tuple(p)
                                                                      for p in geom["coordinates"][0])))
        f["name"] = name
        feats.append(f)
    assert layer.dataProvider().addFeatures(feats)
    return layer


def test_whole_area_png_html_csv(run_alg, pred, tmp_path):
    out = tmp_path / "out"
    results, fb = run_alg(ALG, {"INPUT": pred["path"], "OUTPUT_PNG": str(out / "chart.png"),
                                "OUTPUT_HTML": str(out / "chart.html"), "OUTPUT_CSV": str(out / "imp.csv")})
    assert Path(results["OUTPUT_PNG"]).read_bytes()[:8] == PNG_MAGIC
    assert (out / "chart.png").stat().st_size > 10000
    html = Path(results["OUTPUT_HTML"]).read_text()
    assert "<svg" in html and "wind" in html
    t = imp.read_importance_csv(results["OUTPUT_CSV"])
    assert t.regions == ["all"] and t.factors == ["snow", "radiation", "wind"]
    month = t.get("all", "month")
    assert month.dominant()[0] == "snow" and month.dominant()[6] == "wind"
    w = pred["weights"].reshape(365, 3, -1).mean(axis=2)
    np.testing.assert_allclose(month.mean, imp.seasonal_importance(pred["dates"], w, t.factors)
                               .get("all", "month").mean, atol=1e-6)
    assert results["N_REGIONS"] == 1
    assert '"DJF": "snow"' in results["DOMINANT"] and '"JJA": "wind"' in results["DOMINANT"]
    assert fb.progress_values and max(fb.progress_values) == pytest.approx(100.0)


def test_regions_in_another_crs_svg_and_skipped_feature(run_alg, pred, tmp_path):
    layer = regions_layer({"west": (X0, Y0 - 4000, X0 + 2000, Y0), "east": (X0 + 2000, Y0 - 4000, X0 + 5000, Y0),
                           "far": (0, 0, 1000, 1000)})
    results, fb = run_alg(ALG, {"INPUT": pred["path"], "REGIONS": layer, "REGION_FIELD": "name", "PERIOD": 2,
                                "STYLE": 1, "OUTPUT_PNG": str(tmp_path / "r.png"),
                                "OUTPUT_HTML": str(tmp_path / "r.svg"), "OUTPUT_CSV": str(tmp_path / "r.csv")})
    t = imp.read_importance_csv(results["OUTPUT_CSV"])
    assert t.regions == ["west", "east"]
    west = pred["weights"][:, :, :, :2].reshape(365, 3, -1).mean(axis=2)
    np.testing.assert_allclose(t.get("west", "season").mean,
                               imp.seasonal_importance(pred["dates"], west, t.factors).get("all", "season").mean,
                               atol=1e-6)
    assert any("far" in w and "skipped" in w for w in fb.of_kind("warning")), fb.messages
    assert "<svg" in Path(results["OUTPUT_HTML"]).read_text()
    assert Path(results["OUTPUT_PNG"]).read_bytes()[:8] == PNG_MAGIC
    assert results["N_REGIONS"] == 2


def test_csv_input_is_charted(run_alg, tmp_path):
    dates = np.arange(np.datetime64("2019-01-01"), np.datetime64("2020-01-01"))
    w = np.random.default_rng(2).dirichlet([1, 1, 1], size=365)
    src = imp.write_importance_csv(imp.seasonal_importance(dates, w, ["lake", "precipitation", "wind"],
                                                           region="NAQU"), str(tmp_path / "eval.csv"))
    results, _ = run_alg(ALG, {"INPUT_CSV": src, "OUTPUT_PNG": str(tmp_path / "c.png"),
                               "OUTPUT_CSV": str(tmp_path / "c.csv")})
    assert Path(results["OUTPUT_PNG"]).read_bytes()[:8] == PNG_MAGIC
    assert imp.read_importance_csv(results["OUTPUT_CSV"]).regions == ["NAQU"]


def test_bad_inputs_are_clear_errors(run_alg, pred, tmp_path):
    from qgis.core import QgsProcessingException

    outs = {"OUTPUT_PNG": str(tmp_path / "x.png"), "OUTPUT_CSV": str(tmp_path / "x.csv")}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QgsProcessingException, match="INPUT: No weight rasters"):
        run_alg(ALG, {"INPUT": str(empty), **outs})
    with pytest.raises(QgsProcessingException, match="give a prediction folder"):
        run_alg(ALG, dict(outs))
    (tmp_path / "a.csv").write_text("region\n")       # exists: a missing file is refused by name first
    with pytest.raises(QgsProcessingException, match="not both"):
        run_alg(ALG, {"INPUT": pred["path"], "INPUT_CSV": str(tmp_path / "a.csv"), **outs})
    far = regions_layer({"far": (0, 0, 1000, 1000)})
    with pytest.raises(QgsProcessingException, match="REGIONS: no feature overlaps"):
        run_alg(ALG, {"INPUT": pred["path"], "REGIONS": far, **outs})


def test_cancel(run_alg, pred, tmp_path, recording_feedback):
    from qgis.core import QgsProcessingException

    fb = recording_feedback()
    fb.cancel()
    with pytest.raises(QgsProcessingException, match="cancel"):
        run_alg(ALG, {"INPUT": pred["path"], "OUTPUT_PNG": str(tmp_path / "x.png"),
                      "OUTPUT_CSV": str(tmp_path / "x.csv")}, feedback=fb)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.qgis_process
def test_qgis_process_writes_the_chart(qgis_process, pred, tmp_path):
    res = qgis_process.run(ALG, {"INPUT": pred["path"], "PERIOD": 1, "OUTPUT_PNG": str(tmp_path / "q.png"),
                                 "OUTPUT_HTML": str(tmp_path / "q.html"), "OUTPUT_CSV": str(tmp_path / "q.csv")},
                           timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert Path(tmp_path / "q.png").read_bytes()[:8] == PNG_MAGIC
    assert imp.read_importance_csv(str(tmp_path / "q.csv")).get("all", "doy").periods[:2] == [1, 2]
    assert res.json["results"]["N_REGIONS"] == 1


def test_zones_raster_regions(run_alg, pred, tmp_path):
    import rasterio

    labels = np.array([[1, 1, 2, 2, 2]] * 4, dtype="uint8")
    zones = str(tmp_path / "regions.tif")
    with rasterio.open(zones, "w", driver="GTiff", width=5, height=4, count=1, dtype="uint8", crs=CRS,
                       transform=pred["transform"], nodata=0) as dst:
        dst.write(labels, 1)
    results, _ = run_alg(ALG, {"INPUT": pred["path"], "ZONES": zones, "ZONE_NAMES": "1=arid;2=tundra",
                               "OUTPUT_PNG": str(tmp_path / "z.png"), "OUTPUT_CSV": str(tmp_path / "z.csv")})
    t = imp.read_importance_csv(results["OUTPUT_CSV"])
    assert t.regions == ["arid", "tundra"]
    w = pred["weights"][:, :, :, 2:].reshape(365, 3, -1).mean(axis=2)
    np.testing.assert_allclose(t.get("tundra", "month").mean,
                               imp.seasonal_importance(pred["dates"], w, t.factors).get("all", "month").mean,
                               atol=1e-6)


def test_variance_shares_are_charted_where_the_folder_has_them(run_alg, tmp_path):
    from qgis.core import QgsProcessingException

    from test_dock import _seasonal_shares
    folder = tmp_path / "gated"
    make_prediction_folder(str(folder), shares=_seasonal_shares())
    outs = {"OUTPUT_PNG": str(tmp_path / "s.png"), "OUTPUT_HTML": str(tmp_path / "s.html"),
            "OUTPUT_CSV": str(tmp_path / "s.csv")}
    results, fb = run_alg(ALG, {"INPUT": str(folder), **outs})            # MEASURE auto: the shares
    t = imp.read_importance_csv(results["OUTPUT_CSV"])
    assert t.measure == "variance_share" and t.kinds("all") == ["month", "season"]
    season = t.get("all", "season")
    np.testing.assert_allclose(season.mean[season.periods.index("DJF")], [0.7, 0.1, 0.2], atol=1e-6)
    assert (season.n == 19).all()                                          # pixels: (0, 0) has no share
    assert '"DJF": "snow"' in results["DOMINANT"] and '"JJA": "radiation"' in results["DOMINANT"]
    assert "Variance share of each factor" in Path(results["OUTPUT_HTML"]).read_text()
    assert any("measure: variance share" in m for _k, m in fb.messages)
    results, _ = run_alg(ALG, {"INPUT": str(folder), "MEASURE": 1, **outs})   # weight: the daily weights
    assert imp.read_importance_csv(results["OUTPUT_CSV"]).measure == "weight"
    with pytest.raises(QgsProcessingException, match="PERIOD: variance shares are by month and season"):
        run_alg(ALG, {"INPUT": str(folder), "PERIOD": 1, **outs})
    plain = tmp_path / "plain"
    make_prediction_folder(str(plain))
    with pytest.raises(QgsProcessingException, match="MEASURE: .* has no seasonal variance shares"):
        run_alg(ALG, {"INPUT": str(plain), "MEASURE": 2, **outs})

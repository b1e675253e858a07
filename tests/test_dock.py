"""The importance dock, offscreen: chart, region selector, pixel inspector, bad input, project memory."""
import os

import numpy as np
import pytest
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_geom

from ismoe_qgis.model import importance as imp
from prediction_fixtures import CRS, X0, Y0, make_prediction_folder

FACTORS = ["snow", "radiation", "wind"]


@pytest.fixture
def pred(tmp_path):
    obs = np.full(365, np.nan)
    obs[::5] = 0.27
    folder = tmp_path / "pred"
    arrays = make_prediction_folder(str(folder), observations={"ST9": (1, 3, obs)})
    arrays["path"] = str(folder)
    arrays["obs"] = obs
    return arrays


@pytest.fixture
def canvas(qgis_app):
    from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle
    from qgis.gui import QgsMapCanvas

    c = QgsMapCanvas()
    c.resize(400, 320)
    c.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    xs, ys = warp_transform(CRS, "EPSG:4326", [X0 - 500, X0 + 5500], [Y0 - 4500, Y0 + 500])
    c.setExtent(QgsRectangle(min(xs), min(ys), max(xs), max(ys)))
    c.show()
    yield c
    c.hide()
    c.deleteLater()
    flush_deletes()


@pytest.fixture
def dock(canvas, qgis_app):
    from qgis.core import QgsProject

    from ismoe_qgis.ui.dock import ImportanceDock

    project = QgsProject()
    d = ImportanceDock(canvas, project=project)
    d.resize(620, 760)
    d.show()
    yield d
    d.cleanup()
    d.hide()
    d.deleteLater()
    flush_deletes()


def flush_deletes():
    """Delete deleteLater()'d widgets now (no event loop runs between tests)."""
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    QCoreApplication.processEvents()


def image_stats(path):
    from qgis.PyQt.QtGui import QImage

    img = QImage(path)
    assert not img.isNull(), path
    img = img.convertToFormat(QImage.Format_RGB32)
    ptr = img.constBits()
    ptr.setsize(img.byteCount())
    arr = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)[:, :img.width(), :3]
    rgb = arr[:, :, ::-1].reshape(-1, 3).astype(int)       # BGRA -> RGB
    return rgb


def colour_pixels(rgb, hex_colour, tol=40):
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).sum(axis=1) < tol).sum())


def assert_no_python_errors(capfd):
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert "unable to convert a QVariant" not in err, err


# --------------------------------------------------------------------------- chart
def test_dock_charts_a_prediction_folder(dock, pred, tmp_path, capfd):
    assert dock.load_source(pred["path"])
    assert dock.wait(60)
    assert dock.message_level() == "success", dock.message()
    assert dock.series_names() == FACTORS
    # the monthly curve of snow is the folder's whole-area monthly mean
    x, y = dock.series_data("snow")
    assert list(x) == list(range(1, 13))
    assert y[0] == pytest.approx(0.8, abs=0.01) and y[6] == pytest.approx(0.1, abs=0.01)
    assert "DJF" in dock.summary_label.text() and "snow" in dock.summary_label.text()
    png = str(tmp_path / "dock.png")
    assert dock.grab().save(png)
    rgb = image_stats(png)
    assert len(np.unique(rgb, axis=0)) > 30, "the dock image looks blank"
    for f in FACTORS:
        assert colour_pixels(rgb, imp.factor_colour(f)) > 100, "no %s curve in the image" % f

    # day of year, stacked: still one series per factor, top of the stack = 1
    dock.set_period("doy")
    dock.set_stacked(True)
    assert dock.series_names() == FACTORS
    x, top = dock.series_data("wind")
    assert len(x) == 365
    np.testing.assert_allclose(top, 1.0, atol=1e-5)
    png2 = str(tmp_path / "dock_stacked.png")
    dock.grab().save(png2)
    rgb2 = image_stats(png2)
    # filled areas: the factor colour at the dock's fill alpha over the white background
    from ismoe_qgis.ui.dock import FILL_ALPHA
    c = np.array([int(imp.factor_colour("wind")[i:i + 2], 16) for i in (1, 3, 5)])
    blended = np.round(c * FILL_ALPHA / 255 + 255 * (1 - FILL_ALPHA / 255)).astype(int)
    assert colour_pixels(rgb2, "#%02X%02X%02X" % tuple(blended), tol=20) > 5000
    assert_no_python_errors(capfd)


def test_region_selector_polygon_in_another_crs_and_extent(dock, pred, qgis_app, request):
    from qgis.core import QgsFeature, QgsGeometry, QgsProject, QgsVectorLayer

    assert dock.load_source(pred["path"], compute=False)
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326&field=name:string", "regions", "memory")
    poly = {"type": "Polygon", "coordinates": [[(X0 + 1000, Y0 - 3000), (X0 + 3000, Y0 - 3000), (X0 + 3000, Y0 - 1000),
                                                (X0 + 1000, Y0 - 1000), (X0 + 1000, Y0 - 3000)]]}
    geo = transform_geom(CRS, "EPSG:4326", poly)
    feat = QgsFeature(layer.fields())
    feat.setGeometry(QgsGeometry.fromWkt("POLYGON((%s))" % ",".join("%r %r" % tuple(p) for p in geo["coordinates"][0])))
    feat["name"] = "centre"
    assert layer.dataProvider().addFeatures([feat])
    layer.setDisplayExpression('"name"')
    QgsProject.instance().addMapLayer(layer)   # the layer combo lists the project's polygon layers
    request.addfinalizer(lambda: QgsProject.instance().removeMapLayer(layer.id()))
    dock.set_polygon_feature(layer)
    assert dock.feature_combo.currentText() == "centre"
    dock.compute()
    assert dock.wait(60)
    assert dock.message_level() == "success", dock.message()
    w = pred["weights"][:, :, 1:3, 1:3].reshape(365, 3, -1).mean(axis=2)
    ref = imp.seasonal_importance(pred["dates"], w, FACTORS).get("all", "month")
    np.testing.assert_allclose(dock.series_data("radiation")[1], ref.column("radiation"), atol=1e-6)
    assert "centre" in dock._chart_title

    # current map extent (canvas in EPSG:4326 covering the whole raster)
    dock.set_region_mode("extent")
    dock.compute()
    assert dock.wait(60)
    assert dock.series_names() == FACTORS and dock.message_level() == "success"

    # a feature outside the raster: a message, no chart change, no exception
    far = QgsFeature(layer.fields())
    far.setGeometry(QgsGeometry.fromWkt("POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))"))
    far["name"] = "far away"
    layer.dataProvider().addFeatures([far])
    dock.set_polygon_feature(layer, fid=2)
    dock._safe(dock.compute)
    assert dock.message_level() == "error" and "outside the prediction raster" in dock.message()


# --------------------------------------------------------------------------- pixel inspector
def _seasonal_shares(h=4, w=5):
    """Shares of (snow, radiation, wind): snow 0.7 in DJF and the winter months, radiation 0.7 in JJA and the
    summer months, wind the rest; pixel (0, 0) has no share (nodata) in any band."""
    from ismoe_qgis.model.contribution_stats import SEASON_MONTHS, SHARE_BANDS
    out = np.zeros((len(SHARE_BANDS), 3, h, w), np.float32)
    for b, band in enumerate(SHARE_BANDS):
        winter = band == "DJF" or (band.isdigit() and int(band) in SEASON_MONTHS["DJF"])
        summer = band == "JJA" or (band.isdigit() and int(band) in SEASON_MONTHS["JJA"])
        out[b] = np.array([0.7, 0.1, 0.2] if winter else [0.1, 0.7, 0.2] if summer else [0.3, 0.3, 0.4])[:, None, None]
    out[:, :, 0, 0] = -9999.0
    return out


def test_dock_charts_the_variance_shares_of_an_additive_or_gated_prediction(dock, tmp_path, capfd):
    folder = tmp_path / "gated"
    make_prediction_folder(str(folder), shares=_seasonal_shares())
    assert dock.load_source(str(folder))
    assert dock.wait(60) and dock.message_level() == "success", dock.message()
    assert dock.current_measure() == "variance_share" and dock.measure_combo.isEnabled()
    assert dock.message().startswith("Variance shares of the whole area")
    assert dock.importance_plot.getAxis("left").labelText == "variance share of the contributions"
    x, y = dock.series_data("snow")
    assert list(x) == list(range(1, 13))
    assert y[0] == pytest.approx(0.7, abs=1e-6) and y[6] == pytest.approx(0.1, abs=1e-6)   # (0, 0) left out
    assert "DJF: <b style='color:{}'>snow</b>".format(imp.factor_colour("snow")) in dock.summary_label.text()
    assert "JJA: <b style='color:{}'>radiation</b>".format(imp.factor_colour("radiation")) in dock.summary_label.text()
    dock.set_period("doy")                 # no share per day of year: said, not a blank chart
    assert dock.message_level() == "warning" and "by month and season" in dock.message()
    assert dock.series_names() == []
    dock.set_period("month")
    dock.set_measure("weight")             # the daily weights of the same folder, with their day of year
    assert dock.wait(60) and dock.current_measure() == "weight"
    assert dock.importance_plot.getAxis("left").labelText == "mean factor weight"
    _x, yw = dock.series_data("snow")
    assert yw[0] == pytest.approx(0.8, abs=0.01)
    dock.set_period("doy")
    assert len(dock.series_data("snow")[0]) == 365
    # a folder without shares: the weights, and no choice offered
    plain = tmp_path / "plain"
    make_prediction_folder(str(plain))
    assert dock.load_source(str(plain)) and dock.wait(60)
    assert dock.current_measure() == "weight" and not dock.measure_combo.isEnabled()
    assert_no_python_errors(capfd)


def _click(canvas, x, y):
    """A real left click on the canvas viewport at map position (x, y) in canvas CRS."""
    from qgis.PyQt.QtCore import QPoint, Qt
    from qgis.PyQt.QtTest import QTest

    dev = canvas.getCoordinateTransform().transform(x, y)
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(int(dev.x()), int(dev.y())))


def test_click_on_a_pixel_fills_the_inspector(dock, canvas, pred, tmp_path, capfd):
    assert dock.load_source(pred["path"], compute=False)
    dock.pick_button.setChecked(True)
    assert canvas.mapTool() is dock.map_tool
    xs, ys = warp_transform(CRS, "EPSG:4326", [X0 + 3500], [Y0 - 1500])   # pixel row 1, col 3
    _click(canvas, xs[0], ys[0])
    assert dock.wait(30)
    px = dock.pixel
    assert px is not None, dock.message()
    assert (px.row, px.col) == (1, 3)
    np.testing.assert_allclose(px.weights, pred["weights"][:, :, 1, 3], rtol=1e-6)
    np.testing.assert_allclose(px.sm, pred["sm"][:, 1, 3], rtol=1e-6)
    items = dock.pixel_plot_items()
    assert set(items) == {"SM estimate", "observed", *FACTORS}
    np.testing.assert_allclose(items["snow"][1], pred["weights"][:, 0, 1, 3], rtol=1e-6)
    np.testing.assert_allclose(items["SM estimate"][1], pred["sm"][:, 1, 3], rtol=1e-6)
    assert len(items["observed"][1]) == np.isfinite(pred["obs"]).sum()
    assert "row 1, col 3" in dock.pixel_label.text() and "ST9" in dock.pixel_label.text()
    dock.tabs.setCurrentIndex(1)
    png = str(tmp_path / "inspector.png")
    dock.grab().save(png)
    assert colour_pixels(image_stats(png), imp.factor_colour("wind")) > 50

    # a pixel without a station: no observation curve
    dock.inspect_map_point((X0 + 500, Y0 - 500))
    assert dock.wait(30)
    assert (dock.pixel.row, dock.pixel.col) == (0, 0)
    assert "observed" not in dock.pixel_plot_items()

    # outside the raster: a clear message, empty inspector, no exception
    _click(canvas, xs[0] + 1.0, ys[0])
    assert dock.wait(30)
    assert dock.message_level() == "error"
    assert "outside the prediction raster" in dock.message()
    assert dock.pixel is None and dock.pixel_plot_items() == {}
    dock.pick_button.setChecked(False)
    assert canvas.mapTool() is not dock.map_tool
    assert_no_python_errors(capfd)


# --------------------------------------------------------------------------- bad input, CSV, project
def test_bad_sources_show_messages(dock, pred, tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not dock.load_source(str(empty))
    assert dock.message_level() == "error" and "No weight rasters" in dock.message()
    assert dock.series_names() == []
    os.rename(os.path.join(pred["path"], "weight_wind.tif"), os.path.join(pred["path"], "weight_lake.tif"))
    assert not dock.load_source(pred["path"])
    assert "do not match" in dock.message() and "lake" in dock.message()
    assert not dock.load_source(str(tmp_path / "nowhere"))
    assert "not found" in dock.message()
    # the pixel inspector without a folder: a message
    dock._safe(dock.inspect_map_point, (X0, Y0))
    assert dock.message_level() == "error" and "prediction folder" in dock.message()
    assert_no_python_errors(capfd)


def test_csv_source_lists_its_regions(dock, tmp_path):
    dates = np.arange(np.datetime64("2019-01-01"), np.datetime64("2020-01-01"))
    w = np.random.default_rng(0).dirichlet([1, 1], size=(365, 3)).transpose(0, 2, 1)   # (T, 2, 3 stations)
    t = imp.seasonal_importance(dates, w, ["lake", "precipitation"], groups=["NAQU", "NAQU", "MAQU"])
    path = imp.write_importance_csv(t, str(tmp_path / "eval_importance.csv"))
    assert dock.load_source(path)
    assert [dock.region_combo.itemText(i) for i in range(dock.region_combo.count())] == ["NAQU", "MAQU"]
    assert dock.series_names() == ["lake", "precipitation"]
    dock.region_combo.setCurrentIndex(1)
    np.testing.assert_allclose(dock.series_data("lake")[1], t.get("MAQU", "month").column("lake"), atol=1e-6)
    dock.set_period("season")
    assert list(dock.series_data("lake")[0]) == [1, 2, 3, 4]


def test_source_is_remembered_in_the_project(canvas, pred, tmp_path, qgis_app):
    from qgis.core import QgsProject

    from ismoe_qgis.ui.dock import PROJECT_KEY_SOURCE, PROJECT_SCOPE, ImportanceDock

    project = QgsProject()
    d1 = ImportanceDock(canvas, project=project)
    assert d1.load_source(pred["path"], compute=False)
    stored = project.readEntry(PROJECT_SCOPE, PROJECT_KEY_SOURCE, "")[0]
    assert project.readPath(stored) == os.path.abspath(pred["path"])
    qgs = str(tmp_path / "p.qgs")
    assert project.write(qgs)
    d1.cleanup()
    project2 = QgsProject()
    d2 = ImportanceDock(canvas, project=project2)
    assert d2.source_path == ""
    assert project2.read(qgs)
    assert d2.source_path == os.path.abspath(pred["path"])
    assert d2.wait(60) and d2.series_names() == FACTORS
    d2.cleanup()
    d1.deleteLater()
    d2.deleteLater()
    flush_deletes()


def test_plugin_adds_and_removes_the_dock(canvas, qgis_app, capfd):
    from qgis.PyQt.QtWidgets import QMainWindow

    from ismoe_qgis.ui.dock import ImportanceDock
    from ismoe_qgis.ui.integration import init_dock, unload_dock

    class FakeIface:
        def __init__(self):
            self.main = QMainWindow()
            self.menus, self.toolbar = [], []

        def mainWindow(self):  # noqa: N802
            return self.main

        def mapCanvas(self):  # noqa: N802
            return canvas

        def addDockWidget(self, area, dock):  # noqa: N802
            self.main.addDockWidget(area, dock)

        def removeDockWidget(self, dock):  # noqa: N802
            self.main.removeDockWidget(dock)

        def addPluginToMenu(self, menu, action):  # noqa: N802
            self.menus.append((menu, action))

        def removePluginMenu(self, menu, action):  # noqa: N802
            self.menus.remove((menu, action))

        def addToolBarIcon(self, action):  # noqa: N802
            self.toolbar.append(action)

        def removeToolBarIcon(self, action):  # noqa: N802
            self.toolbar.remove(action)

    class Plugin:
        pass

    iface = FakeIface()
    iface.main.show()
    plugin = Plugin()
    plugin.iface = iface
    dock = init_dock(iface, plugin)
    assert isinstance(dock, ImportanceDock) and plugin.dock is dock
    assert dock in iface.main.findChildren(ImportanceDock)
    assert not dock.isVisible()
    assert iface.menus and iface.toolbar == [plugin.dock_action]
    plugin.dock_action.trigger()
    assert dock.isVisible()
    plugin.dock_action.trigger()
    assert not dock.isVisible()
    unload_dock(plugin)
    unload_dock(plugin)   # twice is harmless
    assert plugin.dock is None and iface.menus == [] and iface.toolbar == []
    iface.main.close()
    iface.main.deleteLater()
    flush_deletes()
    assert_no_python_errors(capfd)


def test_zone_of_a_raster_layer(dock, pred, tmp_path, request):
    """Zones of a label raster (like the demo's regions.tif) as the region."""
    import rasterio
    from qgis.core import QgsProject, QgsRasterLayer

    labels = np.array([[1, 1, 2, 2, 2]] * 4, dtype="uint8")
    path = str(tmp_path / "zones.tif")
    with rasterio.open(path, "w", driver="GTiff", width=5, height=4, count=1, dtype="uint8", crs=CRS,
                       transform=pred["transform"], nodata=0) as dst:
        dst.write(labels, 1)
        dst.update_tags(region_1="west", region_2="east")
    layer = QgsRasterLayer(path, "zones")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    request.addfinalizer(lambda: QgsProject.instance().removeMapLayer(layer.id()))
    assert dock.load_source(pred["path"], compute=False)
    dock.set_zone(layer, "east")
    assert [dock.zone_combo.itemData(i) for i in range(dock.zone_combo.count())] == ["west", "east"]
    dock.compute()
    assert dock.wait(60) and dock.message_level() == "success", dock.message()
    w = pred["weights"][:, :, :, 2:].reshape(365, 3, -1).mean(axis=2)
    ref = imp.seasonal_importance(pred["dates"], w, FACTORS).get("all", "month")
    np.testing.assert_allclose(dock.series_data("wind")[1], ref.column("wind"), atol=1e-6)


def test_screenshot_script(pred, tmp_path, repo_root):
    """scripts/screenshot_dock.py renders the dock (chart + inspector) offscreen."""
    import subprocess
    import sys

    out = tmp_path / "shot" / "dock.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, str(repo_root / "scripts" / "screenshot_dock.py"), pred["path"],
                           "--out", str(out), "--pixel", "1,3", "--size", "1000x640"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(repo_root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inspector = tmp_path / "shot" / "dock_inspector.png"
    for png in (out, inspector):
        rgb = image_stats(str(png))
        assert len(np.unique(rgb, axis=0)) > 30
    assert colour_pixels(image_stats(str(out)), imp.factor_colour("snow")) > 100
    assert "Traceback" not in proc.stderr
    bad = subprocess.run([sys.executable, str(repo_root / "scripts" / "screenshot_dock.py"), str(tmp_path),
                          "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300,
                         env=env, cwd=str(repo_root))
    assert bad.returncode == 2 and "No weight rasters" in bad.stderr


# --------------------------------------------------------------------------- ensemble spread band
def make_ensemble(arrays, members=3):
    """An ensemble's prediction folder: prediction.json "ensemble" and importance.csv with a spread column."""
    import json

    folder = arrays["path"]
    w = arrays["weights"].astype(float)
    sums, counts = w.sum(axis=(2, 3)), np.full(w.shape[:2], w.shape[2] * w.shape[3])
    scale = 1.0 + 0.1 * (np.arange(members) - (members - 1) / 2)
    t = imp.importance_from_sums(arrays["dates"], sums, counts, FACTORS, member_sums=scale[:, None, None] * sums[None])
    imp.write_importance_csv(t, os.path.join(folder, "importance.csv"))
    path = os.path.join(folder, "prediction.json")
    with open(path) as fh:
        meta = json.load(fh)
    meta["ensemble"] = {"members": members, "seeds": list(range(members)), "sm_spread": "sm_spread.tif",
                        "weight_spread": {f: "weight_spread_%s.tif" % f for f in FACTORS},
                        "spread_meaning": "standard deviation over the ensemble's members (ddof 0)"}
    with open(path, "w") as fh:
        json.dump(meta, fh)
    return imp.read_importance_csv(os.path.join(folder, "importance.csv"))


def visible_bands(dock):
    import pyqtgraph as pg

    return [it for it in dock.importance_plot.getPlotItem().items
            if isinstance(it, pg.FillBetweenItem) and it.isVisible()]


def test_ensemble_spread_band_around_each_line(dock, pred, tmp_path, capfd):
    # a single model: lines, no band
    assert dock.load_source(pred["path"]) and dock.wait(60)
    assert dock.series_names() == FACTORS and visible_bands(dock) == []
    assert "member sd" not in dock.importance_legend.text()

    ref = make_ensemble(pred)
    assert dock.load_source(pred["path"]) and dock.wait(60)
    assert dock.message_level() == "success", dock.message()
    assert "ensemble of 3 members" in dock.info_label.text()
    for kind in ("month", "season", "doy"):
        dock.set_period(kind)
        s = ref.get("all", kind)
        assert len(visible_bands(dock)) == len(FACTORS), kind
        assert sorted(dock.importance_curves.visible_bands) == sorted(FACTORS)
        for j, f in enumerate(FACTORS):
            x, lo, hi = dock.importance_curves.band_data(f)
            np.testing.assert_allclose(x, s.x())
            np.testing.assert_allclose(lo, s.mean[:, j] - s.spread[:, j], atol=1e-6)
            np.testing.assert_allclose(hi, s.mean[:, j] + s.spread[:, j], atol=1e-6)
            np.testing.assert_allclose(dock.series_data(f)[1], s.mean[:, j], atol=1e-6)
    assert "± member sd (3 members)" in dock.importance_legend.text()
    assert "3 members" in dock.importance_legend.toolTip()
    assert "Band: ± member sd (3 members)" in dock.message()
    dock.set_period("month")
    png = str(tmp_path / "band.png")
    assert dock.grab().save(png)
    # the band: the factor's colour at BAND_ALPHA over white
    from ismoe_qgis.ui.dock import BAND_ALPHA
    c = np.array([int(imp.factor_colour("snow")[i:i + 2], 16) for i in (1, 3, 5)])
    blended = np.round(c * BAND_ALPHA + 255 * (1 - BAND_ALPHA)).astype(int)
    assert colour_pixels(image_stats(png), "#%02X%02X%02X" % tuple(blended), tol=12) > 50

    # stacked areas: no band
    dock.set_stacked(True)
    assert dock.importance_curves.visible_bands == [] and "member sd" not in dock.importance_legend.text()
    dock.set_stacked(False)
    assert len(visible_bands(dock)) == len(FACTORS)

    # a region the dock computes itself: no band, and the status says why
    dock.set_region_mode("extent")
    dock.compute()
    assert dock.wait(60) and dock.message_level() == "success", dock.message()
    assert dock.series_names() == FACTORS and visible_bands(dock) == []
    assert "whole-area member spread from importance.csv only" in dock.message()

    # the CSV itself (beside its prediction.json) charts with the band too
    assert dock.load_source(os.path.join(pred["path"], "importance.csv"))
    assert len(visible_bands(dock)) == len(FACTORS) and "(3 members)" in dock.importance_legend.text()
    assert_no_python_errors(capfd)


# --------------------------------------------------------------------------- Temporal Controller
def navigation_2019():
    """A real QgsTemporalNavigationObject over 2019 in one-day frames (what predict's project time gives)."""
    from qgis.core import QgsDateTimeRange, QgsInterval, QgsTemporalNavigationObject, QgsUnitTypes
    from qgis.PyQt.QtCore import QDate, QDateTime, QTime

    nav = QgsTemporalNavigationObject()
    nav.setTemporalExtents(QgsDateTimeRange(QDateTime(QDate(2019, 1, 1), QTime(0, 0)),
                                            QDateTime(QDate(2020, 1, 1), QTime(0, 0)), True, False))
    nav.setFrameDuration(QgsInterval(1, QgsUnitTypes.TemporalDays))
    return nav


def frame_holds(nav, iso):
    from qgis.PyQt.QtCore import QDate, QDateTime, QTime

    rng = nav.dateTimeRangeForFrameNumber(nav.currentFrameNumber())
    return rng.contains(QDateTime(QDate.fromString(iso, "yyyy-MM-dd"), QTime(12, 0)))


def test_date_cursor_follows_the_temporal_controller(canvas, pred, qgis_app, capfd):
    from qgis.core import QgsDateTimeRange, QgsProject
    from qgis.PyQt.QtCore import QDate, QDateTime, QTime

    from ismoe_qgis.ui import chartdata as cd
    from ismoe_qgis.ui.dock import ImportanceDock

    nav = navigation_2019()
    nav.setNavigationMode(nav.Animated)
    nav.setCurrentFrameNumber(nav.findBestFrameNumberForFrameStart(QDateTime(QDate(2019, 2, 3), QTime(12, 0))))
    canvas.setTemporalController(nav)
    d = ImportanceDock(canvas, project=QgsProject())
    try:
        assert d.temporal_controller is nav
        assert d.cursor_date() == np.datetime64("2019-02-03")   # starts on the map's date
        assert d.load_source(pred["path"]) and d.wait(60)
        assert d.cursor_position("importance") == pytest.approx(cd.date_position("month", "2019-02-03"))

        # the controller moves (a frame step): the cursor follows, on every chart
        nav.setCurrentFrameNumber(nav.findBestFrameNumberForFrameStart(QDateTime(QDate(2019, 7, 16), QTime(12, 0))))
        assert d.cursor_date() == np.datetime64("2019-07-16")
        assert d.cursor_position("importance") == pytest.approx(7.0, abs=0.02)
        t = float(np.datetime64("2019-07-16T00:00:00", "s").astype(np.int64))
        assert d.cursor_position("sm") == t and d.cursor_position("weight") == t
        d.set_period("doy")
        assert d.cursor_position("importance") == 197
        d.set_period("season")
        assert d.cursor_position("importance") == pytest.approx(3.0, abs=0.02)
        # a range emitted by the controller itself
        nav.updateTemporalRange.emit(QgsDateTimeRange(QDateTime(QDate(2019, 10, 2), QTime(0, 0)),
                                                      QDateTime(QDate(2019, 10, 3), QTime(0, 0)), True, False))
        assert d.cursor_date() == np.datetime64("2019-10-02")
        # time navigation off: no cursor
        nav.setNavigationMode(nav.NavigationOff)
        assert d.cursor_date() is None and d.cursor_position("importance") is None

        # clicking the chart moves the controller (and switches animated navigation on)
        assert d.set_map_date("2019-08-20")
        assert nav.navigationMode() == nav.Animated and frame_holds(nav, "2019-08-20")
        assert d.cursor_date() == np.datetime64("2019-08-20") and d.message_level() == "success"
        d.set_period("month")
        assert d.chart_clicked("month", 3.0)                   # March, in the year of the cursor
        rng = nav.dateTimeRangeForFrameNumber(nav.currentFrameNumber())
        assert rng.begin().date().month() == 3 and rng.begin().date().year() == 2019
        assert d.cursor_position("importance") == pytest.approx(cd.date_position("month", str(d.cursor_date())))
        assert d.chart_clicked("time", cd.date_position("time", "2019-11-05") + 3000)
        assert frame_holds(nav, "2019-11-05")
        assert d.set_map_date(QDate(2019, 12, 31)) and frame_holds(nav, "2019-12-31")
        # a date outside the controller's range: a message, the frame stays
        frame = nav.currentFrameNumber()
        assert not d.set_map_date("2021-05-01")
        assert d.message_level() == "warning" and "outside the Temporal Controller's range" in d.message()
        assert nav.currentFrameNumber() == frame

        # a real mouse click on the chart
        _click_chart(d, d.importance_plot, 5.0)
        rng = nav.dateTimeRangeForFrameNumber(nav.currentFrameNumber())
        assert rng.begin().date().month() == 5, d.message()
    finally:
        d.cleanup()
        canvas.setTemporalController(None)
        d.deleteLater()
        flush_deletes()
    nav.setCurrentFrameNumber(10)   # after cleanup the dock no longer listens
    assert_no_python_errors(capfd)


def _click_chart(dock, plot, x):
    from qgis.PyQt.QtCore import QPointF, Qt
    from qgis.PyQt.QtTest import QTest

    dock.resize(620, 760)
    dock.show()
    dock.tabs.setCurrentIndex(0)
    vb = plot.getPlotItem().getViewBox()
    ylo, yhi = vb.viewRange()[1]
    scene_pt = vb.mapViewToScene(QPointF(x, (ylo + yhi) / 2))
    QTest.mouseClick(plot.viewport(), Qt.LeftButton, Qt.NoModifier, plot.mapFromScene(scene_pt))


def test_no_temporal_controller_moves_only_the_cursor(pred, canvas, qgis_app):
    from qgis.core import QgsProject

    from ismoe_qgis.ui.dock import ImportanceDock

    for c in (None, canvas):      # no canvas (no iface), and a canvas without a temporal controller
        d = ImportanceDock(c, project=QgsProject())
        try:
            assert d.temporal_controller is None
            assert d.load_source(pred["path"]) and d.wait(60)
            assert d.cursor_position("importance") is None
            assert not d.set_map_date("2019-04-10")
            assert d.cursor_date() == np.datetime64("2019-04-10") and d.message_level() == "warning"
            assert "no Temporal Controller" in d.message()
            assert d.cursor_position("importance") == pytest.approx(3.5 + 9.5 / 30)   # 10 April on the month axis
        finally:
            d.cleanup()
            d.deleteLater()
            flush_deletes()
    # a controller the canvas gets after the dock was made is found at the next click
    nav = navigation_2019()
    d = ImportanceDock(canvas, project=QgsProject())
    try:
        canvas.setTemporalController(nav)
        assert d.set_map_date("2019-04-10") and frame_holds(nav, "2019-04-10")
    finally:
        d.cleanup()
        canvas.setTemporalController(None)
        d.deleteLater()
        flush_deletes()

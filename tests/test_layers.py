"""ismoe:predict's outputs as QGIS layers (issue 11, items 1-2): styled layers loaded on completion,
dominant_factor.tif, GDAL metadata, time navigation (per-band ranges on 3.38+, a group of per-date VRT
layers before), a one-date prediction and a missing style file.

Real QGIS, no mocks: predict runs through processing.run with its own QgsProject/QgsProcessingContext, and
the layers are loaded the way the algorithm dialog loads them (Processing's handleAlgorithmResults).
The model is a tiny random network (no training), the inputs small synthetic rasters.
"""
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
rasterio = pytest.importorskip("rasterio")

from qgis.core import (Qgis, QgsApplication, QgsLayerTreeGroup,  # noqa: E402
                       QgsPalettedRasterRenderer, QgsProcessingContext, QgsProject, QgsRasterLayer,
                       QgsSingleBandPseudoColorRenderer)

from ismoe_qgis.model import importance as imp  # noqa: E402
from ismoe_qgis.model import outputs  # noqa: E402

from prediction_fixtures import TINY_DAYS as DAYS, TINY_FACTORS as FACTORS, TINY_NODATA_COLS as NODATA_COLS  # noqa: E402,F401
from prediction_fixtures import TINY_SIZE as SIZE, TINY_START as START, make_tiny_model, write_tiny_series  # noqa: E402,F401


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 3-factor model (patch 3, SEQ_LEN 4) and its three 10 x 10 x 12-day layers."""
    return make_tiny_model(tmp_path_factory.mktemp("layers_model"))


def run_and_load(tmp_path, tiny, params=None, name="pred"):
    """processing.run into a fresh project, then load like the dialog does. Returns (project, out, manifest,
    feedback, context)."""
    import processing
    from processing.gui.Postprocessing import handleAlgorithmResults

    from conftest import recording_feedback_class
    model, layers = tiny
    project = QgsProject()
    context = QgsProcessingContext()
    context.setProject(project)
    fb = recording_feedback_class()()
    out = str(tmp_path / name)
    processing.run("ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "TILE_SIZE": 8, "OUTPUT": out,
                                     **(params or {})}, feedback=fb, context=context)
    queued = dict(context.layersToLoadOnCompletion())
    alg = QgsApplication.processingRegistry().createAlgorithmById("ismoe:predict")
    assert handleAlgorithmResults(alg, context, fb), fb.text
    with open(os.path.join(out, "prediction.json")) as f:
        man = json.load(f)
    return project, out, man, fb, queued


def prediction_group(project, out):
    groups = [g for g in project.layerTreeRoot().children() if isinstance(g, QgsLayerTreeGroup)]
    name = "ISMoE prediction " + os.path.basename(out)
    hits = [g for g in groups if g.name() == name]
    assert len(hits) == 1, [g.name() for g in groups]
    return hits[0]


def band_of(layer):
    r = layer.renderer()
    return r.inputBand() if hasattr(r, "inputBand") else r.band()


def read_band(path, band):
    with rasterio.open(path) as ds:
        return ds.read(band)


@pytest.fixture(scope="module")
def loaded(qgis_app, tiny, tmp_path_factory):
    return run_and_load(tmp_path_factory.mktemp("layers_run"), tiny)


# --------------------------------------------------------------------------- the rasters
def test_dominant_factor_is_argmax_of_weights(loaded):
    """dominant_factor.tif = 1 + argmax of the weight rasters, 0 where sm is nodata; listed in
    prediction.json; colours = the dock's factor colours (one owner: importance.factor_colour)."""
    _, out, man, _, _ = loaded
    assert man["dominant_factor"] == "dominant_factor.tif" and man["sm_units"] == "m3 m-3"
    with rasterio.open(os.path.join(out, "sm.tif")) as ds:
        sm = ds.read()
    w = np.stack([rasterio.open(os.path.join(out, man["weights"][f])).read() for f in man["factors"]])
    with rasterio.open(os.path.join(out, "dominant_factor.tif")) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 0 and ds.count == len(man["dates"])
        dom = ds.read()
    nod = sm == -9999
    assert nod[:, :, :NODATA_COLS].all() and not nod[:, :, NODATA_COLS + 1:].any()
    np.testing.assert_array_equal(dom[nod], 0)
    np.testing.assert_array_equal(dom[~nod], (np.argmax(w, axis=0) + 1)[~nod])
    assert len(np.unique(dom[~nod])) >= 2, "a random model should not have one factor everywhere"
    lo, hi = man["sm_range"]
    assert lo <= sm[~nod].min() and sm[~nod].max() <= hi and hi - lo < 0.2


def test_gdal_metadata_units_dates_colours(loaded):
    """Other tools read: band DATE items, the m3 m-3 unit of sm, category names and colours of the
    dominant factor (an attribute table on each band of a multi-band GeoTIFF)."""
    from osgeo import gdal
    _, out, man, _, _ = loaded
    ds = gdal.Open(os.path.join(out, "sm.tif"))
    assert ds.GetMetadataItem("UNITS") == "m3 m-3"
    for b, d in enumerate(man["dates"], start=1):
        band = ds.GetRasterBand(b)
        assert band.GetUnitType() == "m3 m-3" and band.GetMetadataItem("DATE") == d and band.GetDescription() == d
    ds = None
    ds = gdal.Open(os.path.join(out, "weight_snow.tif"))
    assert ds.GetRasterBand(1).GetMetadataItem("DATE") == man["dates"][0] and ds.GetMetadataItem("FACTOR") == "snow"
    ds = None
    ds = gdal.Open(os.path.join(out, "dominant_factor.tif"))
    assert ds.GetMetadataItem("FACTORS") == ",".join(man["factors"])
    for b in (1, ds.RasterCount):
        band = ds.GetRasterBand(b)
        assert band.GetCategoryNames() == ["nodata"] + man["factors"]
        assert band.GetMetadataItem("DATE") == man["dates"][b - 1]
        rat = band.GetDefaultRAT()
        assert rat is not None and rat.GetRowCount() == len(man["factors"])
        for row, f in enumerate(man["factors"]):
            rgb = tuple(rat.GetValueAsInt(row, c) for c in (2, 3, 4))
            assert rat.GetValueAsInt(row, 0) == row + 1 and rat.GetValueAsString(row, 1) == f
            assert rgb == outputs.hex_rgb(imp.factor_colour(f))
    ds = None


def test_dominant_factor_function():
    w = np.array([[[[0.2, np.nan]]], [[[0.5, 0.5]]], [[[0.3, 0.5]]]], np.float32)   # (E=3, T=1, 1, 2)
    np.testing.assert_array_equal(outputs.dominant_factor(w), [[[2, 0]]])
    tie = np.full((2, 1, 1, 1), 0.5, np.float32)
    assert outputs.dominant_factor(tie)[0, 0, 0] == 1                                 # ties: the first factor
    assert outputs.display_range(0.123, 0.287) == [0.12, 0.29]
    assert outputs.display_range(np.inf, -np.inf) == list(outputs.DEFAULT_SM_RANGE)


# --------------------------------------------------------------------------- the layers
def test_layers_queued_with_post_processors(loaded):
    project, out, man, _, queued = loaded
    assert len(queued) == 2 + 2 * len(man["factors"])      # SM, dominant factor, weights, variance shares
    for details in queued.values():
        assert details.project is project and details.postProcessor() is not None


def test_predict_loads_styled_layers(loaded):
    """One group per prediction: SM (checked), dominant factor, weights (unchecked), styled."""
    project, out, man, fb, _ = loaded
    T = len(man["dates"])
    group = prediction_group(project, out)
    kids = group.children()
    names = [k.name() for k in kids]
    per_band = Qgis.QGIS_VERSION_INT >= 33800
    sm_name = "Soil moisture (m3/m3)" + ("" if per_band else " by date")
    dom_name = "Dominant factor" + ("" if per_band else " by date")
    assert names == [sm_name, dom_name] + ["Weight: " + f for f in man["factors"]] + \
        ["Variance share: " + f for f in man["factors"]], names
    assert kids[0].itemVisibilityChecked() and not any(k.itemVisibilityChecked() for k in kids[1:])
    lo, hi = man["sm_range"]

    def sm_layers():
        return [kids[0].layer()] if per_band else [n.layer() for n in kids[0].children()]

    for lyr in sm_layers():
        r = lyr.renderer()
        assert isinstance(r, QgsSingleBandPseudoColorRenderer)
        assert (r.classificationMin(), r.classificationMax()) == pytest.approx((lo, hi))
        items = r.shader().rasterShaderFunction().colorRampItemList()
        assert items[0].value == pytest.approx(lo) and items[-1].value == pytest.approx(hi)
        assert items[0].color.name() == "#8c510a" and items[-1].color.name() == "#0c2c84"     # dry -> wet
    top = sm_layers()[0]
    if per_band:
        assert band_of(top) == T
    else:
        assert band_of(top) == 1 and top.name() == man["dates"][-1]
        assert top.source().endswith(os.path.join("by_date", f"sm_{man['dates'][-1]}.vrt"))
    dom = kids[1].layer() if per_band else kids[1].children()[0].layer()
    r = dom.renderer()
    assert isinstance(r, QgsPalettedRasterRenderer)
    assert [(c.value, c.color.name().upper(), c.label) for c in r.classes()] == \
        [(i + 1, imp.factor_colour(f).upper(), f) for i, f in enumerate(man["factors"])]
    n = len(man["factors"])
    for k, f in zip(kids[2:2 + n], man["factors"]):
        lyr = k.layer()
        assert lyr.source() == os.path.join(out, f"weight_{f}.tif")
        r = lyr.renderer()
        assert isinstance(r, QgsSingleBandPseudoColorRenderer) and band_of(lyr) == T
        assert (r.classificationMin(), r.classificationMax()) == (0.0, 1.0)
    for k, f in zip(kids[2 + n:], man["factors"]):          # one value per pixel: band 1, no time range
        lyr = k.layer()
        assert lyr.source() == os.path.join(out, f"variance_share_{f}.tif")
        r = lyr.renderer()
        assert isinstance(r, QgsSingleBandPseudoColorRenderer) and band_of(lyr) == 1
        assert (r.classificationMin(), r.classificationMax()) == (0.0, 1.0)
        assert not lyr.temporalProperties().isActive()
    assert not [m for m in fb.of_kind("warning") if "style" in m], fb.text


@pytest.mark.skipif(Qgis.QGIS_VERSION_INT >= 33800, reason="QGIS >= 3.38 uses per-band temporal ranges")
def test_time_navigation_group_of_dates(loaded):
    """QGIS < 3.38: SM and the dominant factor are groups of one fixed-range layer per date (newest on top);
    on each date exactly one of them is visible; the project's time range is the prediction's."""
    from qgis.core import QgsInterval, QgsTemporalNavigationObject, QgsUnitTypes
    project, out, man, _, _ = loaded
    nav = QgsTemporalNavigationObject()           # what the Temporal Controller steps through
    nav.setTemporalExtents(project.timeSettings().temporalRange())
    nav.setFrameDuration(QgsInterval(1, QgsUnitTypes.TemporalDays))
    assert nav.totalFrameCount() == len(man["dates"])
    kids = prediction_group(project, out).children()
    for sub in kids[:2]:
        layers = [n.layer() for n in sub.children()]
        assert [lyr.name() for lyr in layers] == man["dates"][::-1]
        for lyr, d in zip(layers, man["dates"][::-1]):
            tp = lyr.temporalProperties()
            assert tp.isActive()
            rng = tp.fixedTemporalRange()
            assert rng.begin().toString("yyyy-MM-dd HH:mm:ss") == d + " 00:00:01"    # see inset_day_range
            assert rng.end().toString("yyyy-MM-dd HH:mm:ss") == d + " 23:59:59"
        for i, d in enumerate(man["dates"]):
            frame = nav.dateTimeRangeForFrameNumber(i)
            shown = [lyr.name() for lyr in layers if lyr.temporalProperties().isVisibleInTemporalRange(frame)]
            assert shown == [d]
    rng = project.timeSettings().temporalRange()
    assert rng.begin().toString("yyyy-MM-dd") == man["dates"][0]
    assert rng.end().toString("yyyy-MM-dd") == str(np.datetime64(man["dates"][-1]) + 1)


@pytest.mark.skipif(Qgis.QGIS_VERSION_INT < 33800, reason="per-band temporal ranges need QGIS 3.38")
def test_time_navigation_per_band(loaded):
    project, out, man, _, _ = loaded
    for k in prediction_group(project, out).children():
        tp = k.layer().temporalProperties()
        assert tp.isActive() and tp.mode() == Qgis.RasterTemporalMode.FixedRangePerBand
        ranges = tp.fixedRangePerBand()
        assert sorted(ranges) == list(range(1, len(man["dates"]) + 1))
        assert ranges[1].begin().toString("yyyy-MM-dd") == man["dates"][0]


def test_vrt_view_reads_the_band(loaded, tmp_path):
    """A per-date VRT view, read through QGIS, has the values of its band of the GeoTIFF (no copy)."""
    _, out, man, _, _ = loaded
    b = 2
    views = outputs.band_views(os.path.join(out, "sm.tif"), man["dates"], out_dir=str(tmp_path / "views"))
    assert len(views) == len(man["dates"]) and os.path.getsize(views[b - 1]) < 10000
    lyr = QgsRasterLayer(views[b - 1], "v", "gdal")
    assert lyr.isValid() and lyr.bandCount() == 1
    blk = lyr.dataProvider().block(1, lyr.extent(), lyr.width(), lyr.height())
    vals = np.array([[blk.value(r, c) for c in range(lyr.width())] for r in range(lyr.height())], np.float32)
    ref = read_band(os.path.join(out, "sm.tif"), b)
    nod = ref == -9999
    np.testing.assert_array_equal(vals[~nod], ref[~nod])
    assert all(blk.isNoData(r, c) for r, c in zip(*np.nonzero(nod)))
    with open(views[b - 1]) as f:
        assert 'relativeToVRT="1"' in f.read()                 # the folder can move


# --------------------------------------------------------------------------- bad input
def test_one_date_prediction(qgis_app, tiny, tmp_path):
    """A prediction with one date: one layer per group, the dominant factor gets a real colour table."""
    from osgeo import gdal
    last = str(START + DAYS - 1)
    project, out, man, fb, _ = run_and_load(tmp_path, tiny, {"DATE_FROM": last, "DATE_TO": last})
    assert man["dates"] == [last]
    kids = prediction_group(project, out).children()
    assert len(kids) == 2 + len(man["factors"])      # one date: no variance share (needs 2 days)
    assert man["variance_share"] is None
    if Qgis.QGIS_VERSION_INT < 33800:
        assert [len(k.children()) for k in kids[:2]] == [1, 1]
        assert kids[0].children()[0].layer().temporalProperties().isActive()
    ds = gdal.Open(os.path.join(out, "dominant_factor.tif"))
    ct = ds.GetRasterBand(1).GetColorTable()
    assert ct is not None
    assert ct.GetColorEntry(1)[:3] == outputs.hex_rgb(imp.factor_colour(man["factors"][0]))
    ds = None


def test_missing_style_file_still_loads(qgis_app, tiny, tmp_path, monkeypatch):
    from ismoe_qgis.algorithms import layers
    monkeypatch.setattr(layers, "STYLE_DIR", str(tmp_path / "no_styles"))
    project, out, man, fb, _ = run_and_load(tmp_path, tiny)
    warnings = [m for m in fb.of_kind("warning") if "style file" in m and "missing" in m]
    assert warnings and "sm.qml" in " ".join(warnings) and "weight.qml" in " ".join(warnings)
    kids = prediction_group(project, out).children()
    assert len(kids) == 2 + 2 * len(man["factors"])          # SM, dominant, weights, variance shares
    sm = kids[0].layer() if Qgis.QGIS_VERSION_INT >= 33800 else kids[0].children()[0].layer()
    assert isinstance(sm.renderer(), QgsSingleBandPseudoColorRenderer)
    assert sm.renderer().classificationMax() == pytest.approx(man["sm_range"][1])


def test_load_outputs_off_queues_nothing(qgis_app, tiny, tmp_path):
    import processing
    model, layers = tiny
    context = QgsProcessingContext()
    project = QgsProject()
    context.setProject(project)
    processing.run("ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "TILE_SIZE": 8, "LOAD_OUTPUTS": False,
                                     "OUTPUT": str(tmp_path / "p")}, context=context)
    assert context.layersToLoadOnCompletion() == {}
    assert not os.path.exists(tmp_path / "p" / "by_date")


def test_model_builder_child_loads_layers(qgis_app, tiny, tmp_path):
    """The same mechanism works when predict is a step of a Model Builder model."""
    import processing
    from processing.gui.Postprocessing import handleAlgorithmResults
    from qgis.core import (QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                           QgsProcessingModelChildParameterSource)
    model_path, layers = tiny
    out = str(tmp_path / "model_pred")
    model = QgsProcessingModelAlgorithm("m", "g")
    child = QgsProcessingModelChildAlgorithm("ismoe:predict")
    child.setChildId("predict")
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    for name, value in {"MODEL_FILE": model_path, "FACTORS": layers, "TILE_SIZE": 8, "OUTPUT": out}.items():
        child.addParameterSources(name, [static(value)])
    model.addChildAlgorithm(child)
    project = QgsProject()
    context = QgsProcessingContext()
    context.setProject(project)
    processing.run(model, {}, context=context)
    assert handleAlgorithmResults(model, context)
    with open(os.path.join(out, "prediction.json")) as f:
        man = json.load(f)
    assert len(prediction_group(project, out).children()) == 2 + 2 * len(man["factors"])


def test_opened_by_hand_is_styled(loaded):
    """The <name>.qml beside each raster is QGIS's default style for it: a raster added by hand shows one
    date in pseudocolour (not a colour composite of the first three dates)."""
    _, out, man, _, _ = loaded
    sm = QgsRasterLayer(os.path.join(out, "sm.tif"), "sm", "gdal")
    assert isinstance(sm.renderer(), QgsSingleBandPseudoColorRenderer) and band_of(sm) == len(man["dates"])
    assert sm.renderer().classificationMax() == pytest.approx(man["sm_range"][1])
    dom = QgsRasterLayer(os.path.join(out, "dominant_factor.tif"), "d", "gdal")
    assert isinstance(dom.renderer(), QgsPalettedRasterRenderer)
    assert [c.label for c in dom.renderer().classes()] == man["factors"]


def test_predict_threads_parameter_is_used_and_logged(qgis_app, tiny, tmp_path):
    """ismoe:predict's THREADS (issue 11 item 5): the asked count is set for torch and logged; 0 chooses from
    the load."""
    import torch
    _, _, _, fb, _ = run_and_load(tmp_path, tiny, {"THREADS": 1, "LOAD_OUTPUTS": False}, name="t1")
    assert "CPU threads: 1 (THREADS=1" in fb.text and torch.get_num_threads() == 1
    _, _, _, fb, _ = run_and_load(tmp_path, tiny, {"THREADS": 0, "LOAD_OUTPUTS": False}, name="t0")
    assert "load average" in fb.text.split("CPU threads:")[1].splitlines()[0]

"""No silent drops (core): per-location sample counts and the warning that names the layer."""
import numpy as np
import pytest

pytest.importorskip("torch")

from ismoe_qgis.core_callbacks import Callbacks  # noqa: E402
from ismoe_qgis.data.cube import split_masks  # noqa: E402
from ismoe_qgis.model.train import TrainConfig, report_location_samples, train  # noqa: E402

from test_model import small_cube  # noqa: E402


def station_cube():
    cube = small_cube(T=40, H=4, W=5)
    cube.station_ids = [f"S{i}" for i in range(len(cube.target_rows))]
    r, c = cube.target_rows[3], cube.target_cols[3]
    cube.x[2, :, r, c] = np.nan                   # layer 'ssr' (radiation) has no data at station S3
    cube.y[:, 5] = np.nan                         # station S5 has no observation
    cube.x[4, ::5, cube.target_rows[7], cube.target_cols[7]] = np.nan    # S7: a gap every 5 days in 'u10'
    return cube


def test_counts_and_reasons_name_the_layer():
    cube = station_cube()
    tr, va, te = split_masks(cube.dates, "2021-01-10", "2021-01-20")
    counts = cube.location_sample_counts({"train": tr, "val": va, "test": te})
    assert counts["train"][3] == counts["val"][3] == counts["test"][3] == 0
    assert counts["train"][5] == 0 and counts["train"][7] == 0
    assert counts["train"][0] == int(tr[cube.seq_len - 1:].sum())           # a clean station: every day
    assert cube.why_no_samples(3, tr) == "no data at its pixel in layer 'ssr' (factor radiation)"
    assert cube.why_no_samples(5, tr) == "no soil-moisture observation in the period"
    assert "gap in layer 'u10' (factor wind)" in cube.why_no_samples(7, tr)
    logs = []
    out = report_location_samples(cube, {"train": tr, "val": va, "test": te}, "skip", Callbacks(log=logs.append))
    warned = [m for m in logs if m.startswith("warning:")]
    assert len(warned) == 3 and all(any(f"station {s} has no training sample" in m for m in warned)
                                    for s in ("S3", "S5", "S7"))
    assert out["no_train"] == 3 and out["train"] == counts["train"].tolist()
    # with GAP_POLICY=fill the gappy station trains; a station without observations still cannot
    out_fill = report_location_samples(cube, {"train": tr, "val": va, "test": te}, "fill", Callbacks())
    assert out_fill["train"][7] > 0 and out_fill["train"][5] == 0


def test_train_warns_before_failing_on_an_empty_training_period(tmp_path):
    cube = station_cube()
    cube.y[:] = np.nan
    cube.y[30:, :] = 0.3                          # observations only after the training period
    logs = []
    with pytest.raises(ValueError, match="the training period has no valid sample"):
        train(cube, str(tmp_path / "m.pt"), "ismoe", TrainConfig(epochs=1, val_start="2021-01-10",
                                                                 test_start="2021-01-20"),
              {"conv_channels": 4, "hidden": 8}, Callbacks(log=logs.append))
    assert sum(m.startswith("warning: station") for m in logs) == len(cube.station_ids)
    assert not (tmp_path / "m.pt").exists()

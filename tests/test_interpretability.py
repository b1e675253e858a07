"""The router must learn the planted drivers, not the calendar (small CPU run, fixed seed).

The full-size version with all three models is benchmarks/interpretability.py.
"""
import os
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@pytest.fixture(scope="module")
def interp(demo_region):
    import interpretability
    return interpretability.run(demo_region.path, epochs=6, samples=4096, patch=5, seq=14,
                                models=("ismoe", "mean_expert"), val_samples=2000, log=lambda m: None)


def test_router_recovers_planted_drivers(interp):
    regs = interp["models"]["ismoe"]["regions"]
    recovered = [r for r, s in regs.items() if s["top_is_planted"]]
    assert len(recovered) >= 2, {r: s["ranking"] for r, s in regs.items()}


def test_ismoe_beats_mean_expert(interp):
    ism = interp["models"]["ismoe"]["regions"]
    mean = interp["models"]["mean_expert"]["regions"]
    assert np.mean([s["cc"] for s in ism.values()]) >= np.mean([s["cc"] for s in mean.values()])
    assert all(s["cc"] > 0.5 for s in ism.values()), {r: s["cc"] for r, s in ism.items()}


def test_factors_without_signal_get_no_weight(interp):
    """Snow exists only in the arid sub-region and lakes only outside it: where a factor's
    input is empty its weight must be ~0, whatever the season."""
    regs = interp["models"]["ismoe"]["regions"]
    for r in ("tundra", "monsoon"):
        assert regs[r]["mean_weights"]["snow"] < 0.01
        for season in regs[r]["seasons"].values():
            assert season["mean_weights"]["snow"] < 0.01
    assert regs["arid"]["mean_weights"]["lake"] < 0.01
    # arid, autumn: the snowpack is gone (snow inputs are 0 from about July to November)
    son = regs["arid"]["seasons"].get("SON")
    if son:
        assert son["mean_weights"]["snow"] < 0.05

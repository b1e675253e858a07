"""The weights must find the planted drivers, not the calendar (small CPU run, fixed seed; default MIXTURE).

The full-size version with all three models is benchmarks/interpretability.py.
"""
import os
import sys

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
    """Routing beats equal weights in every sub-region. The absolute CC of this short CPU run
    (6 epochs, 24 x 24 px) depends on the seed: over 8 runs (4 seeds, 2 code versions) the
    tundra CC ranged from 0.34 to 0.68 (mean_expert: 0.26), so the floor here is loose;
    benchmarks/interpretability.py is the full-size check."""
    ism = interp["models"]["ismoe"]["regions"]
    mean = interp["models"]["mean_expert"]["regions"]
    cc = {r: (round(s["cc"], 3), round(mean[r]["cc"], 3)) for r, s in ism.items()}
    assert all(ism[r]["cc"] > mean[r]["cc"] + 0.05 for r in ism), cc
    assert all(s["cc"] > 0.3 for s in ism.values()), cc


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

"""Thread choice for a shared machine (ismoe_qgis/threads.py): from the load, from THREADS, logged."""
import os

import pytest

from ismoe_qgis import threads


@pytest.mark.parametrize("cpus,load,want", [(2, 0.1, 2), (2, 1.0, 1), (2, 1.6, 1), (2, 5.0, 1), (16, 3.2, 13),
                                            (8, 0.0, 8), (1, 0.0, 1)])
def test_threads_follow_the_idle_cpus(cpus, load, want):
    n, why = threads.choose_threads(0, cpus=cpus, load=load)
    assert n == want
    assert f"{cpus} CPUs available" in why and f"{load:.2f}" in why


def test_threads_asked_for_are_used_and_capped():
    assert threads.choose_threads(3, cpus=8, load=7.0) == (3, "THREADS=3")
    n, why = threads.choose_threads(12, cpus=4, load=0.0)
    assert n == 4 and "capped at the 4 CPUs" in why
    with pytest.raises(ValueError, match="THREADS must be 0"):
        threads.choose_threads(-1)


def test_passive_wait_policy_is_set_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert threads.passive_openmp_wait() is True and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.passive_openmp_wait() is False and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_apply_threads_sets_torch_and_logs():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    lines = []
    try:
        assert threads.apply_threads(1, "cpu", lines.append) == 1
        assert torch.get_num_threads() == 1
        assert lines and lines[0].startswith("CPU threads: 1 (THREADS=1")
    finally:
        torch.set_num_threads(before)

"""CPU threads for torch on a shared machine (no qgis, no torch import at module level).

Two facts measured on a 2-core machine (issue 11): one training epoch of a small LSTM took 0.9-1.1 s
with 1 torch thread and 28-125 s with 2 threads while other CPU-bound work ran, and ``make demo`` took
43 minutes instead of 92 s on a loaded machine. OpenMP threads that spin-wait for each other lose
their time slices to the competing work and then wait for each other. So:
- ``passive_openmp_wait()`` sets OpenMP's passive wait policy (waiting threads sleep instead of
  spinning); it must run before torch starts OpenMP, i.e. before torch is imported: the plugin calls
  it at load.
- ``choose_threads()`` picks torch's intra-op threads from the CPUs this process may use and the
  load average at the start: all of them on an idle machine, only the idle ones (at least 1) when
  other work already runs, or what the user asked for (THREADS).
"""
import os

WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


def passive_openmp_wait() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE (and GOMP's spin count to 0) unless the user set them. Returns whether
    it was set here. Effective only when OpenMP has not started yet (before torch is imported)."""
    set_here = WAIT_POLICY[0] not in os.environ
    os.environ.setdefault(*WAIT_POLICY)
    os.environ.setdefault("GOMP_SPINCOUNT", "0")
    return set_here


def cpus_available() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(asked: int = 0, cpus: int = None, load: float = None):
    """(threads, reason). asked > 0: that many (capped at the CPUs available). Otherwise the CPUs that
    the 1-minute load average leaves idle, at least 1. asked < 0 is an error."""
    if asked is None:
        asked = 0
    if int(asked) != asked or asked < 0:
        raise ValueError(f"THREADS must be 0 (choose from the load) or a number of CPU threads >= 1, got {asked}")
    cpus = cpus_available() if cpus is None else cpus
    if asked:
        n = min(int(asked), cpus)
        return n, f"THREADS={int(asked)}" + (f" (capped at the {cpus} CPUs available)" if n < asked else "")
    load = load_average() if load is None else load
    if load is None:
        return cpus, f"{cpus} CPUs available (load average unknown)"
    idle = int(cpus - load + 0.5)
    n = max(1, min(cpus, idle))
    return n, f"{cpus} CPUs available, load average {load:.2f} at the start: {n} idle"


def apply_threads(asked: int = 0, device_type: str = "cpu", log=None) -> int:
    """Choose the threads (``choose_threads``), set torch's intra-op threads, log the choice. Returns it."""
    import torch
    n, why = choose_threads(asked)
    torch.set_num_threads(n)
    if log is not None:
        policy = os.environ.get(WAIT_POLICY[0], "not set")
        log(f"CPU threads: {n} ({why}; OpenMP wait policy {policy})"
            + (" - the CPU side of a CUDA run" if device_type == "cuda" else ""))
    return n

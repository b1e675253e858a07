"""Prediction as a Dask graph (issue 15 item 3): tiles (with their halos) x time chunks on dask.distributed workers.

Where it sits::

    predict_layers (model/predict.py): checks, dates, grid; chooses serial / local cluster / scheduler (plan_workers)
      -> predict_to_folder (model/inference.py): the one writer (lock, staging folder, windowed GeoTIFF writes,
         importance sums, atomic move; nothing left behind on error or cancel), whose tile loop is here
         DaskTilePredictions instead of inference.iter_tile_predictions:
           tasks (tile, time chunk) [windowed models] or, for MEMORY=stateful, a chain per tile in time order
           (each task hands its LSTM state to the next; tiles run in parallel)
           -> on a worker: the model loaded once per worker process (_worker_model), the tile's block with its
              k//2 halo read from the source rasters by path (predict.LayerBlockReader), the same step as the
              serial loop (inference.predict_tile_chunk)
           <- the tile's sm / weights / spread back to the client, written as they complete.

At most IN_FLIGHT_PER_WORKER tasks per worker are submitted at a time, so the memory of workers and client is a few
tiles' worth whatever the raster size. The serial path (WORKERS=1, a small prediction under WORKERS=0, or no dask
installed) is inference.iter_tile_predictions itself; both run predict_tile_chunk on the same blocks, so the outputs
are the same (tests/test_dask.py). Prepare's Zarr path runs its factor block reads (warp + screen) through
ordered_map in the same way (data/prepare.py). No qgis import; dask/distributed are imported only when used.
"""
import contextlib
import dataclasses
import logging
import math
import operator
import os
import sys
import threading
from collections import deque
from typing import Optional

import numpy as np

from ..core_callbacks import ensure

# WORKERS=0 (auto) uses a local cluster only for a prediction of at least this many pixel-days: starting one costs
# seconds (worker processes importing torch), about what the serial loop needs for 10^5 - 10^6 pixel-days
AUTO_MIN_PIXEL_DAYS = 2_000_000
IN_FLIGHT_PER_WORKER = 2          # tasks submitted per worker at a time: one running, one queued
POLL_S = 0.5                      # how often the client checks for cancel while tasks run


class SchedulerError(ValueError):
    """The Dask scheduler (SCHEDULER) cannot be reached or used."""


def dask_available() -> bool:
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
        return True
    except ImportError:
        return False


DASK_MISSING = ("dask and distributed are not installed (Debian/Ubuntu: apt install python3-dask python3-distributed; "
                "elsewhere: pip install 'dask[distributed]')")


@dataclasses.dataclass
class Plan:
    """How a prediction runs: mode 'serial', 'local' (a LocalCluster of `workers` processes) or 'scheduler'."""
    mode: str
    workers: int = 1
    scheduler: Optional[str] = None
    gpus: int = 0                 # local cluster on GPUs: worker i uses cuda:(i % gpus)
    reason: str = ""

    def describe(self) -> str:
        if self.mode == "serial":
            return f"execution: serial ({self.reason})"
        if self.mode == "scheduler":
            return f"execution: Dask scheduler {self.scheduler} ({self.reason})"
        on = f", one per GPU ({self.gpus})" if self.gpus else ", 1 thread and 1 torch thread each"
        return f"execution: local Dask cluster of {self.workers} worker processes{on} ({self.reason})"


def plan_workers(workers: int = 0, scheduler: Optional[str] = None, n_parallel: int = 1, pixel_days: int = 0,
                 device_type: str = "cpu", log=None) -> Plan:
    """Choose serial, local cluster or scheduler.

    scheduler: an address (tcp://host:8786): always Dask on that cluster. workers: 1 = serial; n >= 2 = a local
    cluster of n workers; 0 = auto: a local cluster sized to the machine (one worker per GPU when predicting on CUDA,
    else one per CPU that the load average leaves idle) when there is more than one of them, more than one independent task (n_parallel) and at least
    AUTO_MIN_PIXEL_DAYS pixel-days; otherwise serial. Without dask installed: serial (a warning when WORKERS >= 2)."""
    log = log or (lambda _m: None)
    if isinstance(workers, bool) or workers is None or int(workers) != workers or workers < 0:
        raise ValueError(f"WORKERS must be 0 (auto: sized to the machine), 1 (serial, no Dask) or the number of local "
                         f"Dask workers, got {workers!r}")
    workers = int(workers)
    scheduler = (scheduler or "").strip() or None
    if scheduler is not None:
        if not dask_available():
            raise SchedulerError(f"SCHEDULER '{scheduler}' given, but {DASK_MISSING}")
        return Plan("scheduler", 0, scheduler, reason="SCHEDULER given")
    if workers == 1:
        return Plan("serial", reason="WORKERS=1")
    if not dask_available():
        if workers >= 2:
            log(f"warning: WORKERS={workers} asked for, but {DASK_MISSING}: predicting serially")
        return Plan("serial", reason="dask not installed")
    gpus = 0
    if device_type == "cuda":
        import torch
        gpus = torch.cuda.device_count()
    if workers >= 2:
        return Plan("local", workers, gpus=gpus, reason=f"WORKERS={workers}")
    from ..threads import choose_threads
    if gpus:
        n, what = gpus, f"{gpus} GPU(s)"
    else:                 # the CPUs that the load average leaves idle (as THREADS=0 does for torch's threads)
        n, why = choose_threads(0)
        what = f"{n} idle CPU(s): {why}"
    if n < 2:
        return Plan("serial", reason=f"WORKERS=0 (auto): {what}")
    if n_parallel < 2:
        return Plan("serial", reason="WORKERS=0 (auto): one tile task only")
    if pixel_days < AUTO_MIN_PIXEL_DAYS:
        return Plan("serial", reason=f"WORKERS=0 (auto): {pixel_days} pixel-days, under the {AUTO_MIN_PIXEL_DAYS} "
                                     f"that pay for starting a cluster; WORKERS >= 2 forces one")
    return Plan("local", min(n, n_parallel), gpus=gpus, reason=f"WORKERS=0 (auto): {what}")


def connect_timeout() -> float:
    """Seconds to wait for a scheduler: dask's own setting distributed.comm.timeouts.connect (default 30 s)."""
    import dask
    from dask.utils import parse_timedelta
    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect", "30s"), default="s"))


def _python_for_workers(log=None):
    """Worker processes are spawned with sys.executable, which must be this process's own Python: inside QGIS it is
    the QGIS binary (qgis, qgis_process.bin) or a `python3` found on PATH, which may be another installation (pyenv).
    Use sys.executable when it lies in sys.prefix, else <sys.prefix>/bin/python<X.Y> (Windows: python.exe).
    Returns the executable the workers get."""
    import multiprocessing
    exe = sys.executable or ""
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"

    def ours(path):
        real = os.path.realpath(path)
        return os.path.basename(path).lower().startswith("python") and any(
            real.startswith(os.path.realpath(p) + os.sep) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})

    if exe and ours(exe):
        return exe
    for prefix in dict.fromkeys([sys.prefix, sys.exec_prefix, sys.base_prefix]):
        for cand in (os.path.join(prefix, "bin", f"python{ver}"), os.path.join(prefix, "bin", "python3"),
                     os.path.join(prefix, "python.exe")):
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                multiprocessing.set_executable(cand)
                if log is not None:
                    log(f"Dask workers run {cand} (this process's executable {exe or '?'} is not its own Python)")
                return cand
    return exe


# The C allocator of the worker processes. distributed's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which also fixes
# glibc's mmap threshold at 128 KiB: every tensor above it is fresh mmapped pages, and a tile task ran 2x slower than
# the same step in this process (measured: torch.add 3x, the LSTM cell 2.5x). Keep freed memory up to these sizes
# instead (as benchmarks/run_all.py's 'keep' regime); the peak RSS is the same.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(256 * 2 ** 20)}


def start_local_cluster(n_workers: int, log=None):
    """A distributed.LocalCluster of n_workers processes, 1 thread each, no dashboard, WORKER_ENV in their
    environment, spawned with this process's Python. This process's environment is left as it was (the nanny
    writes its pre-spawn variables, e.g. OMP_NUM_THREADS=1, into os.environ)."""
    import dask
    from distributed import LocalCluster
    _python_for_workers(log)
    keys = set(WORKER_ENV) | set(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    saved = {k: os.environ.get(k) for k in keys}
    try:
        os.environ.update(WORKER_ENV)     # the nanny takes os.environ over its config for these
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def dask_client(plan: Plan, log=None):
    """A distributed.Client for the plan (closed, with its local cluster, at the end). An unreachable SCHEDULER raises
    SchedulerError within connect_timeout() seconds."""
    log = log or (lambda _m: None)
    from distributed import Client
    if plan.mode == "scheduler":
        timeout = connect_timeout()
        try:
            client = Client(plan.scheduler, timeout=timeout, set_as_default=False)
        except Exception as e:  # noqa: BLE001 - OSError/TimeoutError/ValueError (bad address): one clear message
            raise SchedulerError(f"SCHEDULER: could not connect to the Dask scheduler at '{plan.scheduler}' within "
                                 f"{timeout:g} s ({type(e).__name__}: {e}); check the address (tcp://host:8786) and "
                                 f"that the scheduler runs and is reachable from here, or leave SCHEDULER empty to "
                                 f"use a local cluster (dask setting distributed.comm.timeouts.connect sets the "
                                 f"wait)") from None
        try:
            n = len(client.scheduler_info().get("workers", {}))
            log(f"Dask scheduler {plan.scheduler}: {n} worker(s)")
            yield client
        finally:
            client.close()
        return
    try:
        cluster = start_local_cluster(plan.workers, log)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"WORKERS: could not start a local Dask cluster of {plan.workers} workers ({type(e).__name__}: "
                           f"{e}); set WORKERS=1 to predict without Dask") from e
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


# ------------------------------------------------------------------------------------------------ worker side
@dataclasses.dataclass
class PredictSpec:
    """What every task needs, scattered once to the workers: paths, not arrays."""
    model_path: str
    model_stamp: tuple            # (size, mtime_ns) of the model file when the prediction started
    reader: object                # predict.LayerBlockReader: reads (V, t, h, w) blocks from the source rasters
    device: str = "auto"          # DEVICE as given; each worker resolves it (local GPU cluster: gpus below)
    amp: bool = True
    gpus: int = 0
    torch_threads: int = 1        # per task: Dask's threads are the parallelism (measured: 2 torch threads per
                                  # worker on a loaded 2-core machine made a task 15x slower, OpenMP waits)
    gdal_cache: int = 128 * 2 ** 20
    out_from: int = 0
    dates_out: Optional[np.ndarray] = None


_WORKER = {}                      # per worker process: the loaded model (one at a time)


def _stamp(path):
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def _worker_device(spec: PredictSpec):
    import torch
    from .device import resolve_device
    if spec.gpus:
        idx = 0
        try:
            from distributed import get_worker
            idx = int(get_worker().name) % spec.gpus
        except (ValueError, TypeError):
            pass
        return torch.device(f"cuda:{idx}")
    return resolve_device(spec.device, lambda _m: None)


def _worker_model(spec: PredictSpec):
    """(model, device, autocast dtype), loaded once per worker process and prediction (cached by path and stamp)."""
    key = (spec.model_path, tuple(spec.model_stamp), spec.device, spec.gpus, spec.amp)
    hit = _WORKER.get("model")
    if hit is not None and hit[0] == key:
        return hit[1:]
    import socket

    import torch
    from .io import load_model
    from .device import autocast_dtype
    try:
        stamp = _stamp(spec.model_path)
    except OSError as e:
        raise FileNotFoundError(f"MODEL_FILE '{spec.model_path}' cannot be read on the Dask worker on "
                                f"{socket.gethostname()} ({e}): on a cluster the model and the factor layers must be "
                                f"on a file system that every worker sees, at the same path") from None
    if stamp != tuple(spec.model_stamp):
        raise ValueError(f"MODEL_FILE '{spec.model_path}' changed while the prediction ran: run it again")
    torch.set_num_threads(max(1, int(spec.torch_threads)))
    dev = _worker_device(spec)
    model, _, _ = load_model(spec.model_path, dev)
    _WORKER.clear()                       # one model per worker: drop the previous prediction's
    _WORKER["model"] = (key, model, dev, autocast_dtype(dev, spec.amp))
    return model, dev, autocast_dtype(dev, spec.amp)


def _chunk_task(spec: PredictSpec, tile, chunk, state):
    """One (tile, time chunk) on a worker: ((sm, weights, spread) or None for warm-up, LSTM state on the CPU or None)."""
    import rasterio

    from .inference import predict_tile_chunk
    model, dev, amp_dtype = _worker_model(spec)
    if state is not None:
        state = tuple(s.to(dev) for s in state)
    with rasterio.Env(GDAL_CACHEMAX=spec.gdal_cache):
        res, state = predict_tile_chunk(model, spec.reader, tile, chunk, spec.out_from, spec.dates_out, dev, amp_dtype,
                                        state)
    if state is not None:
        state = tuple(s.cpu() for s in state)      # may move to another worker: no device tensors in transit
    return res, state


# ------------------------------------------------------------------------------------------------ client side
class DaskTilePredictions:
    """A tile loop with inference.iter_tile_predictions's signature and yields, run as Dask tasks on `client`.

    Window models: one independent task per (tile, time chunk). Stateful models: per tile, its chunks in time order,
    each task taking the previous one's LSTM state (a future: it stays on the worker), tiles in parallel. Yields in
    completion order (the writer places each block by its offsets). A failed task raises its error here, after the
    tasks still in flight are cancelled; so does a cancel (callbacks.is_cancelled), checked every POLL_S seconds."""

    def __init__(self, client, spec: PredictSpec, on_result=None):
        self.client = client
        self.spec = spec
        self.on_result = on_result

    def __call__(self, model, read_block, height, width, out_from, out_to, dates_out, tile_size=128, time_chunk=64,
                 device="cpu", amp_dtype=None, callbacks=None):
        from .inference import tile_plan
        cb = ensure(callbacks)
        client = self.client
        stateful = model.cfg.stateful
        tiles, chunks = tile_plan(model.cfg, height, width, out_from, out_to, tile_size, time_chunk)
        spec = dataclasses.replace(self.spec, out_from=int(out_from),
                                   dates_out=np.asarray(dates_out).astype("datetime64[D]"))
        [spec_f] = client.scatter([spec], broadcast=True, hash=False)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        limit = IN_FLIGHT_PER_WORKER * n_workers
        if stateful:          # a tile's next chunk is put first when its previous one is done: few tiles open
            ready = deque((ti, 0, None) for ti in range(len(tiles)))
        else:
            ready = deque((ti, ci, None) for ti in range(len(tiles)) for ci in range(len(chunks)))
        total, done = len(tiles) * len(chunks), 0
        flight = {}                                 # output future -> (tile index, chunk index, state future)
        wake = threading.Event()
        try:
            while ready or flight:
                while ready and len(flight) < limit:
                    ti, ci, prev = ready.popleft()
                    full = client.submit(_chunk_task, spec_f, tiles[ti], chunks[ci], prev, pure=False)
                    out = client.submit(operator.getitem, full, 0, pure=False)
                    st = client.submit(operator.getitem, full, 1, pure=False) if stateful else None
                    out.add_done_callback(lambda _f: wake.set())
                    flight[out] = (ti, ci, st)
                    del full, prev
                wake.clear()
                finished = sorted((f for f in flight if f.done()), key=lambda f: flight[f][:2])
                if not finished:
                    cb.check_cancel()
                    wake.wait(POLL_S)
                    continue
                for fut in finished:
                    ti, ci, st = flight.pop(fut)
                    res = fut.result()              # the task's own exception, re-raised here
                    fut.release()
                    if stateful and ci + 1 < len(chunks):
                        ready.appendleft((ti, ci + 1, st))
                    elif st is not None:
                        st.release()
                    done += 1
                    if res is not None:
                        r0, c0 = tiles[ti][:2]
                        o0, o1 = chunks[ci]
                        item = (r0, c0, o0, o1) + tuple(res)
                        if self.on_result is not None:
                            self.on_result(item)
                        yield item
                    cb.progress(done / total)
                    cb.check_cancel()
        finally:
            pending = list(flight) + [s for (_, _, s) in flight.values() if s is not None] + \
                [p for (_, _, p) in ready if p is not None]
            if pending:
                client.cancel(pending)


def ordered_map(client, fn, arg_tuples, callbacks=None, in_flight: int = None):
    """fn(*args) for each args of arg_tuples as Dask tasks on `client`, yielded in the order given (so sums over the
    results are the serial ones to the bit), at most `in_flight` (default IN_FLIGHT_PER_WORKER per worker) submitted
    at a time so that memory stays bounded. Cancel (callbacks) is checked every POLL_S seconds; a task's error is
    raised here, after the tasks in flight are cancelled. Used by prepare's block reads (data/prepare.py)."""
    import asyncio
    cb = ensure(callbacks)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    limit = max(1, in_flight or IN_FLIGHT_PER_WORKER * n_workers)
    todo = deque(arg_tuples)
    flight = deque()
    try:
        while todo or flight:
            while todo and len(flight) < limit:
                flight.append(client.submit(fn, *todo.popleft(), pure=False))
            fut = flight[0]
            while True:
                cb.check_cancel()
                try:
                    res = fut.result(timeout=POLL_S)
                    break
                except (TimeoutError, asyncio.TimeoutError):
                    if fut.done():             # finished with an error that is a TimeoutError: raise it
                        res = fut.result()
                        break
            flight.popleft()
            fut.release()
            yield res
    finally:
        if flight:
            client.cancel(list(flight))


def task_counts(cfg, height: int, width: int, n_out: int, tile_size: int, time_chunk: int):
    """(independent tasks, all tasks) of a prediction: tiles x chunks, tiles only for a stateful model."""
    tiles = math.ceil(height / tile_size) * math.ceil(width / tile_size)
    chunks = math.ceil(n_out / time_chunk) + (math.ceil(cfg.spin_up / time_chunk) if cfg.stateful else 0)
    return (tiles if cfg.stateful else tiles * chunks), tiles * chunks

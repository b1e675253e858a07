"""Training windows drawn chunk-wise from a cube that need not fit in memory (issue 15 item 2).

``ChunkedWindowSampler`` has the interface of ``model.sampler.WindowSampler`` (``batch(t_idx, n_idx, m, context)``
-> (G, S, V, k, k) windows, targets, day of year; attributes ``seq_len``, ``device``, ``y``) and returns the same
windows, value for value, for the same indices. Instead of one normalised, padded copy of the whole cube it holds
a few *blocks*: chunk-aligned pieces of the cube (all variables, a run of days, a spatial tile) read with the halo
a window needs (k // 2 pixels around, the window's days before), normalised like the in-memory sampler (NaN -> 0,
zeros outside the grid and before the first date).

A window belongs to the block that holds its centre pixel and last day. ``order_runs`` (called by the training
loop after each epoch's draw) groups the epoch's runs by block and shuffles the blocks, so consecutive batches are
cut from one loaded block (many windows per load); the next block of that order is read by a background thread
while the current one trains. Any other request (validation, test) is served block by block through a small LRU
cache. Memory: ``cache_bytes`` of blocks plus one block in flight, whatever the cube size.

``make_sampler`` picks the in-memory sampler when its copies of the cube fit in the memory available (physical
memory, RLIMIT_AS, a cgroup limit), this one otherwise, or the one the user forces (TrainConfig.cube_in_memory,
``CUBE_IN_MEMORY`` = auto | memory | chunked).
"""
import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..options import CUBE_MODES

FIT_FRACTION = 0.6          # the in-memory sampler is chosen when its copies need at most this share of the memory


# ------------------------------------------------------------------------------------------ memory
def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _vm_size():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rlimit_left():
    try:
        import resource
    except ImportError:         # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    used = _vm_size() or 0
    return max(0, soft - used)


def _cgroup_left():
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f:
                text = f.read().strip()
            if text == "max":
                continue
            lim = int(text)
            if lim >= 1 << 60:
                continue
            with open(usage) as f:
                return max(0, lim - int(f.read().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_memory():
    """Bytes this process can still allocate: the least of the available physical memory, what RLIMIT_AS
    leaves of the address space, and a cgroup's limit less its usage; None when none of them is known."""
    vals = [v for v in (_meminfo_available(), _rlimit_left(), _cgroup_left()) if v is not None]
    return min(vals) if vals else None


def in_memory_bytes(cube, pad_days: int = 0) -> int:
    """Peak bytes the in-memory sampler allocates for its normalised, padded copies of the cube (the normalised
    copy and the padded one, plus the cube itself where it is read from Zarr)."""
    V, T, H, W = cube.x.shape
    r = cube.patch_size // 2
    padded = V * (T + pad_days) * (H + 2 * r) * (W + 2 * r) * 4
    own = V * T * H * W * 4
    return padded + own + (own if getattr(cube, "lazy", False) else 0)


def _fmt_bytes(n):
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def choose_mode(cube, mode: str = "auto", pad_days: int = 0, available=None):
    """('memory' | 'chunked', reason) for CUBE_IN_MEMORY = mode."""
    mode = (mode or "auto").lower()
    if mode not in CUBE_MODES:
        raise ValueError(f"CUBE_IN_MEMORY must be one of {', '.join(CUBE_MODES)}, got '{mode}'")
    need = in_memory_bytes(cube, pad_days)
    avail = available_memory() if available is None else available
    what = (f"the in-memory sampler needs about {_fmt_bytes(need)} for its copies of the cube, "
            f"{_fmt_bytes(avail)} is available")
    if mode != "auto":
        return mode, f"CUBE_IN_MEMORY={mode} ({what})"
    if avail is None or need <= FIT_FRACTION * avail:
        return "memory", f"CUBE_IN_MEMORY=auto: in memory ({what})"
    return "chunked", f"CUBE_IN_MEMORY=auto: chunk-wise ({what})"


def make_sampler(cube, device, pad_days: int = 0, mode: str = "auto", log=print, in_memory=None, **options):
    """The window sampler for training on `cube`: ``in_memory`` (the class model.sampler.WindowSampler, passed in
    so that this data module does not import the model package) or a ChunkedWindowSampler; see choose_mode."""
    which, reason = choose_mode(cube, mode, pad_days)
    if which == "memory":
        if in_memory is None:
            from ..model.sampler import WindowSampler as in_memory
        if log:
            log(f"window sampler: {reason}")
        return in_memory(cube, device, pad_days=pad_days)
    s = ChunkedWindowSampler(cube, device, pad_days=pad_days, **options)
    if log:
        log(f"window sampler: {reason}; blocks of {s.block_shape[0]} days x {s.block_shape[1]} x "
            f"{s.block_shape[2]} px (chunks {tuple(s.chunks[1:])}), cache {_fmt_bytes(s.cache_bytes)}")
    return s


# ------------------------------------------------------------------------------------------ sampler
class ChunkedWindowSampler:
    """WindowSampler's interface over a cube read block by block (see the module doc)."""

    def __init__(self, cube, device, pad_days: int = 0, block_bytes: int = None, cache_bytes: int = None,
                 prefetch: bool = True):
        import torch
        self.torch = torch
        k, L = cube.patch_size, cube.seq_len
        self.seq_len = L
        self.pad = int(pad_days)
        self.k, self.r = k, k // 2
        self.src = cube.x
        self.shape = V, T, H, W = tuple(int(s) for s in cube.x.shape)
        self.mean = np.asarray(cube.x_mean, np.float32)[:, None, None, None]
        self.std = np.asarray(cube.x_std, np.float32)[:, None, None, None]
        self.device = device
        self.host_gather = device.type != "cpu"
        yn = (cube.y - cube.y_mean) / cube.y_std
        self.y = torch.from_numpy(np.asarray(yn, np.float32))
        self.rows_np = np.asarray(cube.target_rows, np.int64)
        self.cols_np = np.asarray(cube.target_cols, np.int64)
        self.rows, self.cols = torch.from_numpy(self.rows_np), torch.from_numpy(self.cols_np)
        doy = (cube.dates - cube.dates.astype("datetime64[Y]")).astype(np.int64) + 1
        self.doy = torch.from_numpy(doy)
        from .zarrcube import default_chunks
        ch = getattr(cube.x, "chunks", None)
        self.chunks = tuple(int(c) for c in ch) if ch is not None and len(ch) == 4 else default_chunks(V, T, H, W)
        avail = available_memory() or (4 << 30)
        # an eighth of what is left: training itself (the model, its batches, validation) needs the rest
        self.cache_bytes = int(cache_bytes or min(2 << 30, max(32 << 20, avail // 8)))
        block_bytes = int(block_bytes or max(1 << 20, self.cache_bytes // 4))
        _, tc, yc, xc = self.chunks
        per_chunk = V * tc * yc * xc * 4
        n = max(1, block_bytes // max(1, per_chunk))
        nx_all, ny_all, nt_all = math.ceil(W / xc), math.ceil(H / yc), math.ceil(T / tc)
        bx = min(nx_all, max(1, int(math.isqrt(n))))
        by = min(ny_all, max(1, n // bx))
        bt = min(nt_all, max(1, n // (bx * by)))
        self.block_shape = (bt * tc, by * yc, bx * xc)
        self.n_blocks = (math.ceil(T / self.block_shape[0]), math.ceil(H / self.block_shape[1]),
                         math.ceil(W / self.block_shape[2]))
        self.halo_t = L - 1
        self._cache = OrderedDict()           # block id -> (tensor (V, days, rows, cols), halo)
        self._cache_used = 0
        self._lock = threading.Lock()
        self._futures = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ismoe-prefetch") if prefetch else None
        self._plan, self._plan_pos = [], {}
        self.stats = {"blocks_read": 0, "bytes_read": 0, "prefetched": 0, "waited": 0}

    # ---- blocks
    def block_of(self, t, rows, cols):
        bt, bh, bw = self.block_shape
        _, ny, nx = self.n_blocks
        return (np.asarray(t, np.int64) // bt * ny + np.asarray(rows, np.int64) // bh) * nx + \
            np.asarray(cols, np.int64) // bw

    def _origin(self, bid):
        _, ny, nx = self.n_blocks
        ti, rest = divmod(int(bid), ny * nx)
        yi, xi = divmod(rest, nx)
        bt, bh, bw = self.block_shape
        return ti * bt, yi * bh, xi * bw

    def _load(self, bid, halo):
        """Block `bid` with `halo` days before it and r pixels around, normalised, NaN -> 0, zeros outside."""
        V, T, H, W = self.shape
        r = self.r
        t0, r0, c0 = self._origin(bid)
        bt, bh, bw = self.block_shape
        t1, r1, c1 = min(T, t0 + bt), min(H, r0 + bh), min(W, c0 + bw)
        buf = np.zeros((V, (t1 - t0) + halo, (r1 - r0) + 2 * r, (c1 - c0) + 2 * r), np.float32)
        ta, ra, ca = max(0, t0 - halo), max(0, r0 - r), max(0, c0 - r)
        tb, rb, cb = t1, min(H, r1 + r), min(W, c1 + r)
        a = self.src[:, ta:tb, ra:rb, ca:cb]
        a = np.array(a, np.float32, copy=True) if isinstance(a, np.ndarray) else np.asarray(a, np.float32)
        a -= self.mean
        a /= self.std
        np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        buf[:, ta - (t0 - halo):, ra - (r0 - r):ra - (r0 - r) + (rb - ra), ca - (c0 - r):ca - (c0 - r) + (cb - ca)] = a
        with self._lock:
            self.stats["blocks_read"] += 1
            self.stats["bytes_read"] += a.nbytes
        return self.torch.from_numpy(buf), halo

    def _put(self, bid, entry):
        with self._lock:
            if bid in self._cache:
                return
            self._cache[bid] = entry
            self._cache_used += entry[0].numel() * 4
            while self._cache_used > self.cache_bytes and len(self._cache) > 1:
                _, (old, _h) = self._cache.popitem(last=False)
                self._cache_used -= old.numel() * 4

    def _get(self, bid, need):
        """Block bid with at least `need` days of halo: from the cache, the prefetch thread, or read now."""
        with self._lock:
            hit = self._cache.get(bid)
            if hit is not None and hit[1] >= need:
                self._cache.move_to_end(bid)
                return hit
            fut = self._futures.pop(bid, None)
        if fut is not None:
            entry = fut.result()
            self.stats["prefetched"] += 1
            if entry[1] >= need:
                self._put(bid, entry)
                return entry
        self.stats["waited"] += 1
        entry = self._load(bid, max(need, self.halo_t))
        with self._lock:
            old = self._cache.pop(bid, None)
            if old is not None:
                self._cache_used -= old[0].numel() * 4
        self._put(bid, entry)
        return entry

    def _prefetch(self, bids):
        if self._pool is None:
            return
        for bid in bids:
            with self._lock:
                if bid in self._cache or bid in self._futures:
                    continue
                self._futures[bid] = self._pool.submit(self._load, bid, self.halo_t)

    def order_runs(self, rng, run_end, run_loc, run_valid, m: int = 1):
        """The epoch's runs grouped by block, blocks in a random order (rng), runs within a block in their drawn
        order; starts reading the first blocks. run_valid (m * count,) in the loop's row order (j * count + g)."""
        run_end, run_loc = np.asarray(run_end), np.asarray(run_loc)
        bids = self.block_of(run_end, self.rows_np[run_loc], self.cols_np[run_loc])
        ub, inv = np.unique(bids, return_inverse=True)
        perm = rng.permutation(len(ub))
        rank = np.empty(len(ub), np.int64)
        rank[perm] = np.arange(len(ub))
        order = np.argsort(rank[inv], kind="stable")
        self._plan = [int(b) for b in ub[perm]]
        self._plan_pos = {b: i for i, b in enumerate(self._plan)}
        self._prefetch(self._plan[:1])
        valid = np.asarray(run_valid).reshape(m, len(run_end))[:, order].reshape(-1)
        return run_end[order], run_loc[order], valid

    # ---- WindowSampler interface
    def batch(self, t_idx, n_idx, m: int = 1, context: int = None):
        """As WindowSampler.batch: runs of m days ending at t_idx at locations n_idx, each with `context` days
        before it. Returns xb (G, context + m, V, k, k), yb (m * G,), db (m * G,)."""
        torch = self.torch
        context = self.seq_len - 1 if context is None else int(context)
        t = np.asarray(t_idx, np.int64).reshape(-1)
        n = np.asarray(n_idx, np.int64).reshape(-1)
        if len(t) and int(t.min()) - m + 1 - context < -self.pad:
            raise ValueError(f"a run of {m} days with {context} days of context before day {int(t.min())} starts "
                             f"before the sampler's {self.pad} days of padding")
        S, k = context + m, self.k
        V = self.shape[0]
        need = S - 1
        if need > self.halo_t:
            self.halo_t = need
        rows, cols = self.rows_np[n], self.cols_np[n]
        bids = self.block_of(t, rows, cols)
        out = torch.empty((V, len(t), S, k, k), dtype=torch.float32)
        order = []
        for b in bids:                       # blocks in the order the batch first needs them
            if not order or order[-1] != b:
                order.append(int(b))
        done = set()
        for bid in order:
            if bid in done:
                continue
            done.add(bid)
            blk, halo = self._get(bid, need)
            sel = np.nonzero(bids == bid)[0]
            t0, r0, c0 = self._origin(bid)
            sv, st, sr, _ = blk.stride()
            runs = blk.as_strided((blk.numel() - k + 1, k), (1, 1))
            first = torch.from_numpy((t[sel] - S + 1 - t0 + halo) * st + (rows[sel] - r0) * sr + (cols[sel] - c0))
            within = (torch.arange(V)[:, None, None] * sv + torch.arange(S)[:, None] * st
                      + torch.arange(k) * sr)
            xs = runs.index_select(0, (within[:, None] + first[:, None, None]).view(-1)).view(V, len(sel), S, k, k)
            out[:, torch.from_numpy(sel)] = xs
        if self._plan:
            pos = [self._plan_pos[b] for b in done if b in self._plan_pos]
            if pos:
                nxt = max(pos) + 1
                self._prefetch(self._plan[nxt:nxt + 1])
        tt = torch.from_numpy(t)
        nn = torch.from_numpy(n)
        td = tt[None, :] + torch.arange(1 - m, 1)[:, None]
        yb, db = self.y[td, nn[None, :]].reshape(-1), self.doy[td].reshape(-1)
        xb = out
        if self.host_gather:
            xb, yb, db = (a.pin_memory().to(self.device, non_blocking=True) for a in (xb, yb, db))
        return xb.permute(1, 2, 0, 3, 4), yb, db

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            self._cache.clear()
            self._futures.clear()
            self._cache_used = 0

    def __del__(self):
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
        except Exception:
            pass

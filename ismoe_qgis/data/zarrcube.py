"""The dataset cube stored as a Zarr folder (``*.zarr``): chunked, read lazily (issue 15 item 1).

Layout (Zarr format 2, readable by zarr 2.x and 3.x and by ``xarray.open_zarr``; see docs/architecture.md
"Dataset cube as Zarr"):

- ``data``          float32 (variable, time, y, x), chunks (all variables, a time chunk, a spatial tile), NaN = nodata
- ``target``        float32 (time, location), NaN = missing
- ``centre_valid``  uint8 (time, location): every variable valid at the target pixel that day (the gap test of
                    training, written by prepare so training does not scan the cube for it)
- ``target_row``, ``target_col`` int32 (location,)
- coordinates ``time`` (int32 days since 1970-01-01, CF units), ``variable`` (names), ``y``, ``x``
  (pixel-centre coordinates in the grid's CRS)
- root attributes: ``ismoe_format`` (``ismoe-cube-zarr/1``), ``meta`` (the same header as the .npz cube:
  factors, variables, grid, statistics, patch size, ...), ``crs_wkt``, ``transform`` (GDAL order),
  ``first_date``, ``last_date``.

Every array carries ``_ARRAY_DIMENSIONS`` so xarray names the dims. The store is written into a temporary folder
next to the target and moved in place when complete, so a failed or cancelled write leaves nothing behind.
At open, every array's chunk files are checked against the chunk keys its shape and chunks call for: a partial
copy is an error naming the folder and the missing chunks, never NaN read silently.
"""
import itertools
import json
import math
import os
import shutil
import uuid
from typing import Optional

import numpy as np

ZARR_FORMAT = "ismoe-cube-zarr/1"
KNOWN_MAJOR = 1
ARRAYS = ("data", "target", "centre_valid", "target_row", "target_col", "time")
DEFAULT_TILE = 64                 # spatial chunk (pixels)
DEFAULT_CHUNK_BYTES = 16 << 20    # target bytes of one data chunk (all variables)
HINT = "; create it again with 'ismoe:preparedataset' (output file name ending in .zarr)"


def _zarr():
    try:
        import zarr
    except ImportError as e:       # pragma: no cover - Debian package python3-zarr
        raise ImportError("Zarr dataset cubes need the 'zarr' Python package (Debian: python3-zarr; "
                          "'ismoe:installdependencies' lists it)") from e
    return zarr


def zarr_major() -> int:
    return int(str(_zarr().__version__).split(".")[0])


def is_zarr_path(path) -> bool:
    """A path that names a Zarr cube: ends in .zarr, is a folder, or is a metadata file inside a .zarr folder."""
    p = os.fspath(path).rstrip("/\\")
    return p.lower().endswith(".zarr") or os.path.isdir(p) or _store_of(p) != p


def _store_of(path: str) -> str:
    """foo.zarr/.zgroup, foo.zarr/.zattrs, foo.zarr/.zmetadata (what a file dialog can pick) -> foo.zarr."""
    base = os.path.basename(path)
    if base in (".zgroup", ".zattrs", ".zmetadata", "zarr.json") and \
            os.path.dirname(path).lower().rstrip("/\\").endswith(".zarr"):
        return os.path.dirname(path)
    return path


def default_chunks(V: int, T: int, H: int, W: int, tile: int = DEFAULT_TILE,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES, min_days: int = 16) -> tuple:
    """(V, time chunk, tile, tile): all variables in one chunk (a window needs all of them), a square spatial
    tile, and as many days as make ``chunk_bytes``."""
    ty, tx = max(1, min(H, tile)), max(1, min(W, tile))
    tc = int(chunk_bytes // max(1, V * ty * tx * 4))
    return (V, max(1, min(T, max(min_days, tc))), ty, tx)


def _check_chunks(chunks, shape):
    if len(chunks) != 4 or any(int(c) < 1 for c in chunks):
        raise ValueError(f"CHUNKS must be 4 positive sizes (variables, days, rows, columns), got {chunks}")
    V, T, H, W = shape
    c = [int(x) for x in chunks]
    return (V, min(c[1], T), min(c[2], H), min(c[3], W))


# ----------------------------------------------------------------------------------------- writing
def _open_group_w(path):
    zarr = _zarr()
    if zarr_major() >= 3:
        return zarr.open_group(path, mode="w", zarr_format=2)
    return zarr.open_group(path, mode="w")


def _create(group, name, shape, chunks, dtype, fill_value, dims):
    shape = tuple(int(s) for s in shape)
    chunks = tuple(max(1, int(c)) for c in chunks)
    if zarr_major() >= 3:
        a = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                               config={"write_empty_chunks": True})
    else:
        a = group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                 write_empty_chunks=True)
    a.attrs["_ARRAY_DIMENSIONS"] = list(dims)
    return a


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


class ZarrCubeWriter:
    """Writes a cube into ``path`` (a .zarr folder) block by block: ``write_data`` per block of the grid,
    ``write_targets`` per block of locations, then ``finish(meta)``. Used as a context manager: on an exception
    the temporary folder is removed and ``path`` is left as it was."""

    def __init__(self, path, variables, dates, grid: dict, target_rows, target_cols, chunks=None):
        self.path = os.fspath(path).rstrip("/\\")
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        self.tmp = os.path.join(d, f".{os.path.basename(self.path)}.tmp-{uuid.uuid4().hex[:8]}")
        dates = np.asarray(dates).astype("datetime64[D]")
        V, T = len(variables), len(dates)
        H, W = int(grid["height"]), int(grid["width"])
        rows, cols = np.asarray(target_rows, np.int32), np.asarray(target_cols, np.int32)
        N = len(rows)
        self.shape = (V, T, H, W)
        self.chunks = _check_chunks(chunks, self.shape) if chunks else default_chunks(V, T, H, W)
        self.n_targets = N
        g = self.group = _open_group_w(self.tmp)
        tc = self.chunks[1]
        nc = max(1, min(N, max(1024, (4 << 20) // max(1, 4 * tc))))
        self.data = _create(g, "data", self.shape, self.chunks, "f4", float("nan"), ("variable", "time", "y", "x"))
        self.target = _create(g, "target", (T, N), (tc, nc), "f4", float("nan"), ("time", "location"))
        self.valid = _create(g, "centre_valid", (T, N), (tc, nc), "u1", 0, ("time", "location"))
        for name, arr in (("target_row", rows), ("target_col", cols)):
            a = _create(g, name, (N,), (max(1, N),), "i4", -1, ("location",))
            a[:] = arr
        t = _create(g, "time", (T,), (max(1, T),), "i4", 0, ("time",))
        t[:] = dates.astype("int64").astype(np.int32)
        t.attrs.update({"units": "days since 1970-01-01", "calendar": "proleptic_gregorian"})
        names = np.array([str(v) for v in variables])
        try:
            vc = _create(g, "variable", (V,), (V,), names.dtype, "", ("variable",))
            vc[:] = names
        except Exception:       # pragma: no cover - a zarr without fixed-width strings: names stay in `meta`
            pass
        tr = list(grid["transform"])
        ys = tr[3] + tr[5] * (np.arange(H) + 0.5)
        xs = tr[0] + tr[1] * (np.arange(W) + 0.5)
        for name, vals in (("y", ys), ("x", xs)):
            a = _create(g, name, (len(vals),), (max(1, len(vals)),), "f8", float("nan"), (name,))
            a[:] = vals

    def write_data(self, t0: int, r0: int, c0: int, block: np.ndarray):
        """block float32 (V, t, h, w) at days t0.., rows r0.., cols c0.. (chunk-aligned blocks write fastest)."""
        V, t, h, w = block.shape
        self.data[:, t0:t0 + t, r0:r0 + h, c0:c0 + w] = block

    def write_targets(self, t0: int, n_sel, y_block: np.ndarray, valid_block: np.ndarray):
        """Target values (t, n) and centre-valid flags (t, n) at days t0.. for the locations n_sel (a slice or
        sorted indices)."""
        t = y_block.shape[0]
        if isinstance(n_sel, slice):
            self.target[t0:t0 + t, n_sel] = y_block
            self.valid[t0:t0 + t, n_sel] = valid_block.astype(np.uint8)
        else:
            self.target.oindex[slice(t0, t0 + t), np.asarray(n_sel)] = y_block
            self.valid.oindex[slice(t0, t0 + t), np.asarray(n_sel)] = valid_block.astype(np.uint8)

    def finish(self, meta: dict):
        meta = _jsonable(dict(meta))
        self.group.attrs.update({
            "ismoe_format": ZARR_FORMAT, "meta": meta, "crs_wkt": meta["grid"].get("crs_wkt", ""),
            "transform": list(meta["grid"]["transform"]),
            "first_date": str(np.datetime64(int(self.group["time"][0]), "D")) if self.shape[1] else None,
            "last_date": str(np.datetime64(int(self.group["time"][-1]), "D")) if self.shape[1] else None,
            "chunks": list(self.chunks)})
        try:
            _zarr().consolidate_metadata(self.tmp)
        except Exception:       # pragma: no cover - consolidated metadata is an optimisation for xarray
            pass
        _move_into_place(self.tmp, self.path)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def _move_into_place(tmp: str, path: str):
    """Rename the finished folder onto path; an existing cube (or file) there is replaced."""
    if os.path.lexists(path):
        trash = os.path.join(os.path.dirname(os.path.abspath(path)),
                             f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, trash)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(trash, path)
            raise
        if os.path.isdir(trash) and not os.path.islink(trash):
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.remove(trash)
    else:
        os.replace(tmp, path)


def iter_blocks(shape, chunks, block_bytes: int, itemsize: int = 4):
    """Chunk-aligned blocks (t0, t1, r0, r1, c0, c1) of a (V, T, H, W) array covering it, each within
    ``block_bytes`` where a chunk allows (a block is never smaller than one chunk): spatial tiles grow first
    (whole chunks), then days."""
    V, T, H, W = shape
    _, tc, yc, xc = chunks
    per_chunk = V * tc * yc * xc * itemsize
    n = max(1, int(block_bytes // max(1, per_chunk)))
    ny_all, nx_all, nt_all = math.ceil(H / yc), math.ceil(W / xc), math.ceil(T / tc)
    bx = min(nx_all, n)
    by = min(ny_all, max(1, n // bx))
    bt = min(nt_all, max(1, n // (bx * by)))
    for r0 in range(0, H, by * yc):
        for c0 in range(0, W, bx * xc):
            for t0 in range(0, T, bt * tc):
                yield t0, min(T, t0 + bt * tc), r0, min(H, r0 + by * yc), c0, min(W, c0 + bx * xc)


def write_cube(cube, path, chunks=None, block_bytes: int = 256 << 20):
    """Write a Cube (in memory or lazy) as a Zarr folder, block by block."""
    V, T, H, W = cube.x.shape
    with ZarrCubeWriter(path, cube.variables, cube.dates, cube.grid, cube.target_rows, cube.target_cols,
                        chunks) as w:
        for t0, t1, r0, r1, c0, c1 in iter_blocks((V, T, H, W), w.chunks, block_bytes):
            w.write_data(t0, r0, c0, np.asarray(cube.x[:, t0:t1, r0:r1, c0:c1], np.float32))
        valid = cube.centre_valid()
        step = max(1, w.chunks[1])
        for t0 in range(0, T, step):
            w.write_targets(t0, slice(None), np.asarray(cube.y[t0:t0 + step], np.float32), valid[t0:t0 + step])
        w.finish(cube.meta())


# ----------------------------------------------------------------------------------------- reading
class LazyCubeArray:
    """The cube's (V, T, H, W) values in a Zarr array, read on demand. Supports what the plugin's code asks of
    ``cube.x``: ``shape``/``ndim``/``dtype``/``nbytes``, basic slicing (ints and slices), one index array on an
    axis (e.g. a subset or permutation of variables: a lazy view), pixel lists ``x[:, t, rows, cols]`` (read
    chunk block by chunk block) and ``np.asarray(x)`` (the whole array: only where it fits)."""

    def __init__(self, zarray, path: str, var_index=None, centre_valid=None):
        self._z = zarray
        self.path = path
        V = zarray.shape[0]
        self._vars = None if var_index is None else np.asarray(var_index, np.int64)
        self.shape = ((V,) if self._vars is None else (len(self._vars),)) + tuple(zarray.shape[1:])
        self.chunks = tuple(zarray.chunks)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4
        self.centre_valid = centre_valid      # uint8 (T, N) when it belongs to this variable set

    @property
    def size(self):
        return int(np.prod(self.shape))

    @property
    def nbytes(self):
        return self.size * 4

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"LazyCubeArray({self.path}, shape={self.shape}, chunks={self.chunks})"

    def _take_vars(self, a, sel0):
        """Apply the view's variable selection and the key's axis-0 selection to a block read with all variables."""
        idx = np.arange(self._z.shape[0]) if self._vars is None else self._vars
        return np.take(a, np.atleast_1d(idx[sel0]), axis=0) if not isinstance(sel0, (int, np.integer)) \
            else np.take(a, idx[sel0], axis=0)

    def _norm_key(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = [j for j, k in enumerate(key) if k is Ellipsis][0]
            key = key[:i] + (slice(None),) * (4 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (4 - len(key))
        if len(key) != 4 or any(k is None for k in key):
            raise IndexError(f"{self!r}: unsupported index {key!r}")
        out = []
        for k in key:
            if isinstance(k, (list, np.ndarray)):
                k = np.asarray(k)
                if k.dtype == bool:
                    k = np.nonzero(k)[0]
                out.append(k.astype(np.int64))
            else:
                out.append(k)
        return tuple(out)

    def __getitem__(self, key):
        k0, kt, kr, kc = self._norm_key(key)
        arrays = [i for i, k in enumerate((k0, kt, kr, kc)) if isinstance(k, np.ndarray)]
        if arrays == [0] and all(isinstance(k, slice) and k == slice(None) for k in (kt, kr, kc)):
            idx = np.arange(self._z.shape[0]) if self._vars is None else self._vars
            return LazyCubeArray(self._z, self.path, idx[k0], None)          # a variable view, still lazy
        if 2 in arrays and 3 in arrays:
            return self._pixels(k0, kt, kr, kc)
        rest = (kt, kr, kc)
        if any(isinstance(k, np.ndarray) for k in rest):
            a = self._z.oindex[(slice(None),) + rest]
        else:
            a = self._z[(slice(None),) + rest]
        return np.asarray(self._take_vars(np.asarray(a), k0), np.float32)

    def _pixels(self, k0, kt, rows, cols):
        """x[k0, kt, rows, cols] with rows/cols index arrays of one shape (numpy's pointwise pixels): read by
        spatial tile and time chunk, only the tiles that hold a pixel."""
        rows, cols = np.broadcast_arrays(rows, cols)
        shp = rows.shape
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        T = self._z.shape[1]
        t_idx = np.arange(T)[kt] if not isinstance(kt, np.ndarray) else kt
        scalar_t = np.ndim(t_idx) == 0
        t_idx = np.atleast_1d(t_idx)
        _, tc, yc, xc = self.chunks
        V = self._z.shape[0]
        out = np.empty((V, len(t_idx), len(rows)), np.float32)
        tiles = (rows // yc) * (10 ** 9) + cols // xc
        for tile in np.unique(tiles):
            sel = np.nonzero(tiles == tile)[0]
            ty, tx = int(tile // (10 ** 9)), int(tile % (10 ** 9))
            r0, c0 = ty * yc, tx * xc
            r1, c1 = min(self._z.shape[2], r0 + yc), min(self._z.shape[3], c0 + xc)
            for ci in np.unique(t_idx // tc):
                ts = np.nonzero(t_idx // tc == ci)[0]
                a = np.asarray(self._z[:, ci * tc:min(T, (ci + 1) * tc), r0:r1, c0:c1])
                sub = a[:, t_idx[ts] - ci * tc]                                   # V, t, h, w
                out[:, ts[:, None], sel[None, :]] = sub[:, :, rows[sel] - r0, cols[sel] - c0]
        out = out.reshape((V, len(t_idx)) + shp)
        if scalar_t:
            out = out[:, 0]
        return np.asarray(self._take_vars(out, k0), np.float32)

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self._z[...], np.float32)
        if self._vars is not None:
            a = a[self._vars]
        return a if dtype is None else a.astype(dtype, copy=False)


def _fail(msg):
    from .cube import DatasetFileError
    return DatasetFileError(msg)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def expected_chunk_keys(shape, chunks, sep="."):
    grid = [max(1, math.ceil(s / c)) if s else 0 for s, c in zip(shape, chunks)]
    if not shape:
        return ["0"]
    if any(g == 0 for g in grid):
        return []
    return [sep.join(str(i) for i in ix) for ix in itertools.product(*[range(g) for g in grid])]


def missing_chunks(store: str, name: str) -> list:
    """Chunk keys of array `name` that its shape and chunks call for and that are not in the folder."""
    d = os.path.join(store, name)
    za = _read_json(os.path.join(d, ".zarray"))
    if za is None:
        return ["<.zarray>"]
    sep = za.get("dimension_separator") or "."
    keys = expected_chunk_keys(tuple(za["shape"]), tuple(za["chunks"]), sep)
    if sep == ".":
        present = set(os.listdir(d))
    else:
        present = set()
        for root, _dirs, files in os.walk(d):
            rel = os.path.relpath(root, d)
            for f in files:
                present.add(f if rel == "." else "/".join(rel.split(os.sep) + [f]))
    return [k for k in keys if k not in present]


def open_cube(path, cls):
    """Open a Zarr cube lazily as a ``cls`` (Cube): the target, locations and dates are read, the values stay
    on disk. Errors (DatasetFileError) name the folder and what is wrong."""
    path = _store_of(os.fspath(path).rstrip("/\\"))
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset file not found: {path}")
    if not os.path.isdir(path):
        raise _fail(f"{path} is not a Zarr folder (a .zarr dataset cube is a folder){HINT}")
    root_meta = _read_json(os.path.join(path, ".zattrs"))
    if not os.path.exists(os.path.join(path, ".zgroup")) and not os.path.exists(os.path.join(path, "zarr.json")):
        raise _fail(f"{path} is a folder but not a Zarr store (no .zgroup): give a .zarr dataset cube written by "
                    f"'ismoe:preparedataset', or its .npz file{HINT}")
    fmt = (root_meta or {}).get("ismoe_format")
    if not fmt:
        raise _fail(f"{path} is a Zarr store but not an ismoe dataset cube (it has no 'ismoe_format' attribute)"
                    f"{HINT}")
    try:
        kind, ver = str(fmt).rsplit("/", 1)
        major = int(ver.split(".")[0])
    except ValueError:
        raise _fail(f"{path}: unknown cube format '{fmt}'{HINT}") from None
    if kind != ZARR_FORMAT.split("/")[0]:
        raise _fail(f"{path}: unknown cube format '{fmt}' (expected {ZARR_FORMAT}){HINT}")
    if major > KNOWN_MAJOR:
        raise _fail(f"{path} is a cube of format {fmt}, newer than this plugin reads ({ZARR_FORMAT}): update the "
                    f"plugin")
    lacking = [a for a in ARRAYS if not os.path.isdir(os.path.join(path, a))]
    if lacking:
        raise _fail(f"{path} is not a complete ismoe dataset cube: it lacks the array(s) {', '.join(lacking)} "
                    f"(a partial copy?){HINT}")
    for a in ARRAYS:
        miss = missing_chunks(path, a)
        if miss:
            raise _fail(f"{path}: array '{a}' lacks {len(miss)} chunk file(s) ({', '.join(miss[:5])}"
                        f"{', ...' if len(miss) > 5 else ''}): the folder is a partial copy; copy the whole .zarr "
                        f"folder again{HINT}")
    meta = root_meta.get("meta")
    if not isinstance(meta, dict):
        raise _fail(f"{path}: its 'meta' attribute is not a JSON object{HINT}")
    zarr = _zarr()
    try:
        g = zarr.open_group(path, mode="r")
        data = g["data"]
        y = np.asarray(g["target"][...], np.float32)
        rows = np.asarray(g["target_row"][...], np.int32)
        cols = np.asarray(g["target_col"][...], np.int32)
        days = np.asarray(g["time"][...], np.int64)
        valid = np.asarray(g["centre_valid"][...], np.uint8)
    except Exception as e:      # a damaged chunk or metadata file
        raise _fail(f"{path} is damaged ({type(e).__name__}: {e}){HINT}") from None
    from .cube import check_header
    check_header(path, meta, len(data.shape) and data.shape[0], HINT)
    if len(data.shape) != 4 or y.ndim != 2 or days.ndim != 1:
        raise _fail(f"{path}: array shapes data {data.shape}, target {y.shape}, time {days.shape} are not "
                    f"(V, T, H, W), (T, N), (T,){HINT}")
    if valid.shape != y.shape:
        raise _fail(f"{path}: centre_valid {valid.shape} does not match target {y.shape}{HINT}")
    if np.isinf(y).any():
        raise _fail(f"{path}: array 'target' holds inf values{HINT}")
    return cls.from_stored(LazyCubeArray(data, path, centre_valid=valid), y, rows, cols, days, meta, path, HINT)


def store_bytes(path) -> Optional[int]:
    total = 0
    for root, _d, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total

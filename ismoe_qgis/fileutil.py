"""Small file helpers shared by the core and the algorithms (no qgis import).

One mechanism each for the ways an output can go wrong (docs/inputs.md, "Faults and concurrency"):

- ``atomic_output(path)`` / ``staged_file(path)``: a file is written to a hidden temporary beside it and
  moved onto `path` only when complete; nothing is left at `path` on error or cancel.
- ``staged_folder(out_dir, owned)``: a folder of outputs (a prediction) is written into a hidden sibling
  folder and moved into place at the end: the whole set replaces the old one at once. The folder is never
  created before that move, and a folder holding files that are not of this kind is refused, not mixed.
- ``output_lock(path)``: one writer per output. An OS lock (flock; released by the kernel when the process
  dies, even by kill -9) on a hidden lock file beside the output; a second run fails at once with the other
  run's PID and start time; the lock file of a dead run is taken over.
- ``clean_stale(path)``: temporaries of earlier runs that were killed (their owner PID is in the name) are
  removed when that process is gone, and reported when it still runs.
- ``check_free_space`` / ``write_error`` / ``io_errors``: free space checked before long work, and every
  write error names the path and the parameter.

Names of the hidden files beside an output ``<dir>/<name>`` (all start with ``.ismoe-``):
``.ismoe-lock-<name>`` (lock), ``.ismoe-tmp-<pid>-<rand>-<name>`` (staging), ``.ismoe-old-<pid>-<rand>-<name>``
(an old output folder being replaced).
"""
import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid

PREFIX = ".ismoe-"
LOCK_PREFIX = PREFIX + "lock-"
TMP_PREFIX = PREFIX + "tmp-"
OLD_PREFIX = PREFIX + "old-"


class _OutputError(OSError):
    """OSError(errno, message) whose text is the message alone (no '[Errno n]' in front)."""

    def __str__(self):
        return str(self.strerror)


class OutputBusyError(_OutputError):
    """Another run is writing the same output; the message names its PID and start time."""


class OutputWriteError(_OutputError):
    """An output could not be written (disk full, permission, I/O error); the message names the path
    and the parameter."""


class ForeignFilesError(_OutputError):
    """An output folder holds files this run does not own: it is not replaced."""


# --------------------------------------------------------------------------- processes
def _proc_start_ticks(pid):
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or None: with the PID it
    names one process even after the PID is reused."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid, start_ticks=None) -> bool:
    """Whether process `pid` (of this host) still runs; with `start_ticks`, whether it is the same process.
    Unknown (no way to tell): True, so that nothing of a possibly running process is removed."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":  # pragma: no cover - Windows
        try:
            import ctypes
            k32 = ctypes.windll.kernel32
            h = k32.OpenProcess(0x1000, False, pid)      # PROCESS_QUERY_LIMITED_INFORMATION
            if not h:
                return ctypes.GetLastError() == 5         # access denied: it exists
            code = ctypes.c_ulong()
            k32.GetExitCodeProcess(h, ctypes.byref(code))
            k32.CloseHandle(h)
            return code.value == 259                      # STILL_ACTIVE
        except Exception:  # noqa: BLE001
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True
    if start_ticks is not None:
        now = _proc_start_ticks(pid)
        if now is not None and now != int(start_ticks):
            return False                                  # the PID was reused by another process
    return True


def owner_record(**extra) -> dict:
    """Who this run is: PID, host, start time (ISO, local), process start ticks; plus `extra` items."""
    rec = {"pid": os.getpid(), "host": socket.gethostname(),
           "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "proc_start": _proc_start_ticks(os.getpid()), "argv0": os.path.basename(sys.argv[0] or "")}
    rec.update(extra)
    return rec


def describe_owner(rec: dict) -> str:
    if not rec:
        return "PID unknown"
    parts = [f"PID {rec.get('pid', '?')}"]
    if rec.get("host") and rec.get("host") != socket.gethostname():
        parts.append(f"on host {rec['host']}")
    if rec.get("what"):
        parts.append(str(rec["what"]))
    if rec.get("started"):
        parts.append(f"started {rec['started']}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- hidden names beside an output
def _split(path):
    path = os.path.abspath(os.fspath(path))
    return os.path.dirname(path), os.path.basename(path.rstrip(os.sep)) or "output"


def _short(name, room=180):
    """`name`, shortened (with a hash) when a prefix would push it past the file-name limit."""
    if len(name.encode("utf-8")) <= room:
        return name
    import hashlib
    return hashlib.sha1(name.encode("utf-8")).hexdigest()[:16] + name[-40:]


def lock_path(path) -> str:
    d, base = _split(path)
    return os.path.join(d, LOCK_PREFIX + _short(base))


def temporary_sibling(path, kind=TMP_PREFIX, suffix="") -> str:
    """A new hidden name beside `path` (not created): .ismoe-tmp-<pid>-<rand>-<name><suffix>."""
    d, base = _split(path)
    return os.path.join(d, f"{kind}{os.getpid()}-{uuid.uuid4().hex[:8]}-{_short(base)}{suffix}")


def _parse_temporary(fn, base):
    """(kind, pid) of a hidden temporary of the output named `base`, or None."""
    for kind in (TMP_PREFIX, OLD_PREFIX):
        if fn.startswith(kind):
            rest = fn[len(kind):]
            parts = rest.split("-", 2)
            if len(parts) == 3 and parts[0].isdigit() and parts[2].startswith(_short(base)):
                tail = parts[2][len(_short(base)):]
                if tail == "" or tail.startswith("."):
                    return kind, int(parts[0])
    return None


def clean_stale(path, log=None, extra_inside=None) -> list:
    """Remove the hidden temporaries that killed runs left beside output `path` (names with the PID of a
    process that is gone); log the ones whose process still runs (they are not touched). An old output
    folder that was being replaced when its run died is put back when `path` is missing.
    extra_inside: also remove these names' legacy temporaries inside `path` (a folder), e.g. '.ismoe_predict_'
    folders of plugin versions that staged inside the output folder (only call this holding the lock).
    Returns the removed paths."""
    log = log or (lambda _m: None)
    d, base = _split(path)
    removed = []
    inside = os.path.join(d, base)
    found = []
    for folder in (d, inside) if os.path.isdir(inside) and not os.path.islink(inside) else (d,):
        try:     # beside the output, and inside it (where a run staged when it could not write beside it)
            found += [(folder, fn) for fn in sorted(os.listdir(folder))]
        except OSError:
            pass
    for folder, fn in found:
        hit = _parse_temporary(fn, base)
        if hit is None:
            continue
        kind, pid = hit
        full = os.path.join(folder, fn)
        if pid == os.getpid() or pid_alive(pid):
            if pid != os.getpid():
                log(f"warning: {full} is a temporary of a run that still runs (PID {pid}): left as it is")
            continue
        try:
            if kind == OLD_PREFIX and folder == d and not os.path.lexists(os.path.join(d, base)):
                os.rename(full, os.path.join(d, base))
                log(f"restored {os.path.join(d, base)} from {full}: the run that was replacing it (PID {pid}) "
                    f"died before the new one was in place")
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
            removed.append(full)
            log(f"removed {full}: a temporary left by an earlier run (PID {pid}) that did not finish")
        except OSError as e:
            log(f"warning: could not remove the stale temporary {full} ({e.strerror or e})")
    if extra_inside and os.path.isdir(inside):
        for fn in sorted(os.listdir(inside)):
            if any(fn.startswith(p) for p in extra_inside):
                full = os.path.join(inside, fn)
                try:
                    shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
                    removed.append(full)
                    log(f"removed {full}: a temporary left by an earlier run that did not finish")
                except OSError as e:
                    log(f"warning: could not remove the stale temporary {full} ({e.strerror or e})")
    return removed


# --------------------------------------------------------------------------- write errors and free space
def _human(n) -> str:
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def free_bytes(path):
    """Free bytes (for this user) on the file system that holds `path` (or its nearest existing parent)."""
    p = os.path.abspath(os.fspath(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check_free_space(path, need_bytes, param="OUTPUT", what="the outputs"):
    """OutputWriteError naming `param` when the disk that will hold `path` has less than `need_bytes` free."""
    free = free_bytes(path)
    if free is not None and need_bytes is not None and free < need_bytes:
        raise OutputWriteError(errno.ENOSPC, f"{param}: not enough free space for {what} at '{path}': they need up "
                                             f"to {_human(need_bytes)}, the disk has {_human(free)} free; free some "
                                             f"space or choose an {param} on another disk")


_DISK_FULL_WORDS = ("no space left", "disk full", "file write failed", "quota exceeded", "file too large",
                    "enospc", "not enough space")


def write_error(exc, path, param="OUTPUT") -> OSError:
    """An OutputWriteError for `exc` (an OSError, or a library's RuntimeError or GDAL error of a failed
    write) that names `path` and `param` and says what to do. An exception that already names the
    parameter is returned as it is."""
    if isinstance(exc, (OutputBusyError, ForeignFilesError, OutputWriteError)):
        return exc
    text = str(exc)
    err = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or text or type(exc).__name__
    low = text.lower()
    full = err in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG) or any(w in low for w in _DISK_FULL_WORDS)
    if full:
        free = free_bytes(path)
        where = f" ({_human(free)} free)" if free is not None else ""
        msg = (f"{param}: cannot write '{path}': the disk is full{where} ({reason}); free some space or choose "
               f"an {param} on another disk")
        err = errno.ENOSPC
    elif err in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg = f"{param}: cannot write '{path}' ({reason}): choose a folder you can write to"
    else:
        msg = f"{param}: cannot write '{path}' ({reason})"
    return OutputWriteError(err or errno.EIO, msg)


_GDAL_WRITE_WORDS = ("no space left", "write error", "writeencodedtile", "failed to write", "write failed",
                     "disk full", "i/o error", "ioerror", "short write")


@contextlib.contextmanager
def gdal_write_errors(path, param="OUTPUT"):
    """GDAL reports a failed write (disk full while a GeoTIFF is written or closed) as an error message, and
    rasterio logs it without raising: the file would be silently truncated. Collect those messages (GDAL's
    error handler, and rasterio's 'rasterio._env' logger) while the block runs, and raise an OutputWriteError
    naming `path` and `param` when the block wrote nothing whole."""
    import logging
    seen = []

    class _Handler(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    loggers = [logging.getLogger(n) for n in ("rasterio._env", "rasterio._err", "rasterio._io")]
    handler, levels = _Handler(), [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    pushed = False
    try:
        from osgeo import gdal
        gdal.PushErrorHandler(lambda cls, no, msg: seen.append(str(msg)) if cls >= gdal.CE_Failure else None)
        pushed = True
    except Exception:  # noqa: BLE001 - no GDAL bindings: rasterio's logger still reports
        pass
    try:
        yield
    finally:
        if pushed:
            gdal.PopErrorHandler()
        for lg, lv in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(lv)
    bad = [m for m in seen if any(w in m.lower() for w in _GDAL_WRITE_WORDS)]
    if bad:
        raise write_error(OSError(errno.ENOSPC if "space" in " ".join(bad).lower() else errno.EIO, bad[0]), path,
                          param)


@contextlib.contextmanager
def io_errors(path, param="OUTPUT", kinds=None):
    """Turn a failed write inside the block (OSError, torch's 'file write failed' RuntimeError, GDAL's
    errors) into an OutputWriteError that names `path` and `param`."""
    try:
        yield
    except (OutputBusyError, ForeignFilesError, OutputWriteError):
        raise
    except OSError as e:
        raise write_error(e, path, param) from None
    except Exception as e:  # noqa: BLE001 - library write errors that are not OSError
        low = str(e).lower()
        gdal_io = type(e).__name__ in ("CPLE_FileIOError", "CPLE_OpenFailedError") or \
            (type(e).__name__.startswith("CPLE_") and ("write" in low or "space" in low))
        if any(w in low for w in _DISK_FULL_WORDS) or gdal_io or (kinds and isinstance(e, kinds)):
            raise write_error(e, path, param) from None
        raise


def _remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- files
@contextlib.contextmanager
def staged_file(path, suffix="", param="OUTPUT", log=None, keep_on=()):
    """Yield a hidden temporary path beside `path` (not created); when the block ends normally, or by one
    of the exceptions in `keep_on`, move it onto `path` (if it was written); on any other error remove it.
    Stale temporaries of killed runs for the same output are cleaned first. A write error names `path`."""
    path = os.path.abspath(os.fspath(path))
    d = os.path.dirname(path)
    with io_errors(path, param):
        os.makedirs(d, exist_ok=True)
    clean_stale(path, log)
    tmp = temporary_sibling(path, suffix=suffix)
    try:
        yield tmp
    except keep_on:
        if os.path.exists(tmp):
            with io_errors(path, param):
                os.replace(tmp, path)
        raise
    except BaseException:
        _remove(tmp)
        raise
    if os.path.exists(tmp):
        try:
            with io_errors(path, param):
                os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


@contextlib.contextmanager
def atomic_output(path, suffix="", param="OUTPUT"):
    """Yield a temporary path next to `path`; move it onto `path` when the block succeeds,
    remove it when the block fails, so no half-written file is ever left at `path`.
    The temporary is hidden (.ismoe-tmp-<pid>-...) and created empty, so writers that open it work."""
    path = os.path.abspath(os.fspath(path))
    with io_errors(path, param):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temporary_sibling(path, suffix=suffix)
    try:
        with io_errors(path, param):
            open(tmp, "wb").close()
        yield tmp
        with io_errors(path, param):
            os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, _OutputError):
            raise
        if isinstance(e, OSError) and getattr(e, "filename", None) in (None, tmp):
            raise write_error(e, path, param) from None           # the write itself failed (disk full, I/O)
        if isinstance(e, Exception) and not isinstance(e, OSError):
            low = str(e).lower()
            if any(w in low for w in _DISK_FULL_WORDS):
                raise write_error(e, path, param) from None
        raise


def probe_write(path, nbytes, param="OUTPUT", what="the output file"):
    """Check before long work that `nbytes` can be written beside `path`: a hidden file of that size is
    allocated (posix_fallocate where there is one) and removed. OutputWriteError naming `param` when not."""
    path = os.path.abspath(os.fspath(path))
    check_free_space(path, nbytes, param, what)
    tmp = temporary_sibling(path, suffix=".probe")
    try:
        with io_errors(path, param):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if hasattr(os, "posix_fallocate") and nbytes > 0:
                    os.posix_fallocate(fd, 0, int(nbytes))
                else:
                    chunk = b"\0" * min(int(nbytes), 1 << 20)
                    left = int(nbytes)
                    while left > 0:
                        left -= os.write(fd, chunk[:left])
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        _remove(tmp)


# --------------------------------------------------------------------------- folders
def folder_contents(out_dir):
    """Names in `out_dir` (a missing folder: none)."""
    try:
        return sorted(os.listdir(out_dir))
    except FileNotFoundError:
        return []


def _same_fs(a, b) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def check_replaceable(out_dir, owned=None, param="OUTPUT", what="outputs", legacy_inside=()):
    """ForeignFilesError unless `out_dir` is missing, empty, or holds only names that owned(name) claims
    (an earlier output of the same kind, which a new run replaces as a whole)."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ForeignFilesError(errno.ENOTDIR, f"{param}: '{out_dir}' is a file, not a folder: choose a folder "
                                               f"for the {what}")
    foreign = [fn for fn in folder_contents(out_dir)         # (our own hidden temporaries are not foreign)
               if not fn.startswith((TMP_PREFIX, OLD_PREFIX) + tuple(legacy_inside)) and not (owned and owned(fn))]
    if foreign:
        shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
        raise ForeignFilesError(errno.EEXIST, f"{param}: the folder '{out_dir}' holds files that are not {what} "
                                              f"({shown}): they are not replaced or mixed with new ones; choose a "
                                              f"new or empty folder, or the folder of an earlier run of the same "
                                              f"kind")


@contextlib.contextmanager
def staged_folder(out_dir, owned=None, param="OUTPUT", log=None, what="outputs", first=(), last=(),
                  legacy_inside=()):
    """Write a set of outputs into a hidden sibling folder, then put it in place of `out_dir` at once.

    owned(name) -> bool says which names in an existing `out_dir` belong to this kind of output (None: only an
    empty folder may be replaced). Before any work: `out_dir` must be a folder (or missing), and an existing
    one must hold only owned names, else ForeignFilesError naming the others (nothing is touched).
    Stale temporaries of killed runs are cleaned (clean_stale). Yields the staging folder.
    Commit: a missing `out_dir` is created by renaming the staging folder onto it; an existing one is renamed
    away, the staging folder renamed onto it, and the old one removed (the whole old set goes, including its
    files that the new set no longer has). Where `out_dir` cannot be renamed (a mount point, a symbolic link,
    no write permission on its parent) the files are moved in one by one: the owned files that the new set
    lacks are removed first, the names in `last` (e.g. the manifest) moved last. On error or cancel the staging
    folder is removed and `out_dir` is as before (and not created)."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    log = log or (lambda _m: None)
    check_replaceable(out_dir, owned, param, what, legacy_inside)
    parent = os.path.dirname(out_dir)
    with io_errors(out_dir, param):
        os.makedirs(parent, exist_ok=True)
    clean_stale(out_dir, log, extra_inside=legacy_inside)
    tmp = temporary_sibling(out_dir)
    inside = False
    try:
        os.mkdir(tmp)
    except OSError as e:
        if not os.path.isdir(out_dir):
            raise write_error(e, out_dir, param) from None
        tmp = os.path.join(out_dir, os.path.basename(tmp))   # parent not writable: stage inside (hidden)
        inside = True
        with io_errors(out_dir, param):
            os.mkdir(tmp)
    try:
        yield tmp
        with io_errors(out_dir, param):
            _commit_folder(tmp, out_dir, owned, inside, last, log)
    finally:
        _remove(tmp)


def _commit_folder(tmp, out_dir, owned, inside, last, log):
    if not inside and not os.path.lexists(out_dir):
        os.rename(tmp, out_dir)
        return
    if not inside and not os.path.islink(out_dir) and not os.path.ismount(out_dir) and _same_fs(tmp, out_dir):
        old = temporary_sibling(out_dir, kind=OLD_PREFIX)
        try:
            os.rename(out_dir, old)
        except OSError:
            old = None
        if old is not None:
            try:
                os.rename(tmp, out_dir)
            except BaseException:
                os.rename(old, out_dir)                        # put the old set back
                raise
            _remove(old)
            return
    # one by one (into a mount point, through a link, or staged inside)
    new = [fn for fn in os.listdir(tmp)]
    for fn in folder_contents(out_dir):
        full = os.path.join(out_dir, fn)
        if fn not in new and owned and owned(fn) and full != tmp:
            _remove(full)
    order = [fn for fn in new if fn not in last] + [fn for fn in new if fn in last]
    for fn in order:
        src, dst = os.path.join(tmp, fn), os.path.join(out_dir, fn)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        try:
            os.replace(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.move(src, dst)


# --------------------------------------------------------------------------- one writer per output
_HELD = {}                 # lock file -> [thread ident, count, fd, record]
_HELD_GUARD = threading.Lock()


def _try_os_lock(fd) -> bool:
    if os.name == "nt":  # pragma: no cover - Windows: a byte far past the end, released when the process dies
        import msvcrt
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def read_lock(path) -> dict:
    """The owner record in the lock file of output `path` ({} when none or unreadable)."""
    lp = lock_path(path)
    for _ in range(5):           # the owner writes its record right after taking the lock
        try:
            with open(lp, encoding="utf-8") as f:
                text = f.read()
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


@contextlib.contextmanager
def output_lock(path, param="OUTPUT", what=None, log=None):
    """Hold the one-writer lock of output `path` (a file or a folder) while the block runs.

    The lock is an OS lock (flock) on the hidden file .ismoe-lock-<name> beside `path`, which also holds the
    owner's PID, host, start time and algorithm. A second run (another process, or another thread of this
    one) gets OutputBusyError at once, naming that run; the same thread may take it again (re-entrant). The
    kernel drops the lock when its process dies (kill -9 included): a lock file whose process is gone is
    taken over, and the log says so. The lock file is removed when the lock is released."""
    log = log or (lambda _m: None)
    lp = lock_path(path)
    key = os.path.normcase(os.path.abspath(lp))
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            if held[0] != me:
                raise OutputBusyError(errno.EBUSY, _busy_message(path, param, held[3], same_process=True))
            held[1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield held[3]
        finally:
            with _HELD_GUARD:
                held[1] -= 1
        return
    with io_errors(path, param):
        os.makedirs(os.path.dirname(lp), exist_ok=True)
    rec = owner_record(what=what, path=os.path.abspath(os.fspath(path)))
    for _attempt in range(20):
        with io_errors(path, param):
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_os_lock(fd):
                other = read_lock(path)
                raise OutputBusyError(errno.EBUSY, _busy_message(path, param, other))
            try:   # the file we locked must still be the one at lp (another run may have just removed it)
                same = os.fstat(fd).st_ino == os.stat(lp).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                fd = None
                continue
            previous = {}
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 65536).decode("utf-8", "replace")
                previous = json.loads(text) if text.strip() else {}
            except (OSError, ValueError):
                previous = {}
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(rec).encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        break
    else:  # pragma: no cover - the lock file kept disappearing
        raise OutputBusyError(errno.EBUSY, f"{param}: could not take the lock {lp} of '{path}'")
    if previous.get("pid") and previous.get("pid") != os.getpid():
        log(f"took over the lock of '{path}' from a run that is gone ({describe_owner(previous)}); it did not "
            f"finish: its temporaries are cleaned")
    with _HELD_GUARD:
        _HELD[key] = [me, 1, fd, rec]
    try:
        yield rec
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        try:
            os.remove(lp)          # still holding the lock: a waiting run re-checks the inode (above)
        except OSError:
            pass
        os.close(fd)


def _busy_message(path, param, other, same_process=False):
    who = describe_owner(other)
    where = "another algorithm of this QGIS process" if same_process else "another run"
    return (f"{param}: '{os.path.abspath(os.fspath(path))}' is being written by {where} ({who}): two runs must not "
            f"write the same output; wait until that run ends (or stop it), or choose another {param}")


@contextlib.contextmanager
def output_locks(paths, log=None):
    """output_lock for several (path, param, what) at once (None paths are skipped)."""
    with contextlib.ExitStack() as stack:
        recs = [stack.enter_context(output_lock(p, param, what, log)) for p, param, what in paths if p]
        yield recs

"""Install torch (or any pip requirement) for QGIS's own Python into the plugin-private folder.

The core of ``ismoe:installdependencies`` (ismoe_qgis/algorithms/install_deps.py); no qgis import,
so it also runs from plain Python. What it does:

1. finds QGIS's Python interpreter (``qgis_python``: inside QGIS ``sys.executable`` is the qgis
   binary, not Python);
2. runs ``<python> -m pip install --target <temporary folder next to the target> --constraint
   <numpy==the version QGIS uses> <specs>`` in a subprocess, logging pip's lines and turning its
   stages into progress, and stops it when the user cancels;
3. removes any numpy pip put there (QGIS's numpy, which GDAL is built against, is never replaced:
   the same constraint mechanism as the Makefile's constraints.txt, and the folder is put at the
   front of sys.path), checks in a fresh process that the installed packages import, and only then
   moves the folder into place (the old one is replaced as a whole).

A failure or a cancel leaves the target exactly as it was: nothing half-installed.

CPU or CUDA: ``variant_index_args`` gives the pip index for a variant; ``recommended_variant`` says
which fits from ``nvidia-smi``. On Linux the PyPI torch wheel is the CUDA one (it pulls the NVIDIA
runtime wheels, several GB); the CPU wheel comes from PyTorch's CPU index (about 200 MB). On
Windows and macOS the PyPI wheel is what there is (CPU; Apple's MPS on macOS), so both variants use it
there, except CUDA on Windows, which needs PyTorch's CUDA index.
"""
import glob
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading

from ._venv import add_deps_to_path, deps_dir  # noqa: F401 (re-exported)
from .core_callbacks import Cancelled, ensure
from .options import TORCH_VERSION

TORCH_SPEC = "torch==%s" % TORCH_VERSION
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu126"  # Windows only; Linux uses PyPI's CUDA wheel
NEVER_REPLACE = ("numpy",)  # distributions QGIS's Python keeps its own of (GDAL is built against it)

_NETWORK_PATTERNS = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|timed out|NewConnectionError|"
    r"Max retries exceeded|No route to host|getaddrinfo failed|SSLError|ProxyError|"
    r"Could not fetch URL|connection broken", re.IGNORECASE)
_NOT_FOUND = re.compile(r"Could not find a version that satisfies|No matching distribution found", re.I)


class InstallError(RuntimeError):
    """A failed install, with a message for the user (the target folder is unchanged)."""


# --------------------------------------------------------------------------- environment
def qgis_python():
    """The Python interpreter of this process, as a program that can run ``-m pip``.

    Inside QGIS ``sys.executable`` is the QGIS binary (e.g. /usr/bin/qgis); then the interpreter of
    the same version next to ``sys.exec_prefix`` (OSGeo4W: <prefix>/python3.exe, macOS/Linux:
    <prefix>/bin/python3.X) or on PATH is used. None when none is found."""
    ver = "%d.%d" % sys.version_info[:2]
    exe = sys.executable or ""
    if re.fullmatch(r"python(3(\.\d+)?)?(\.exe)?", os.path.basename(exe), re.I) and os.path.isfile(exe):
        return exe
    if sys.platform.startswith("win"):
        candidates = [os.path.join(p, name) for p in (sys.exec_prefix, sys.prefix,
                                                       os.path.join(sys.exec_prefix, "..", "..", "bin"))
                      for name in ("python.exe", "python3.exe")]
    else:
        candidates = [os.path.join(p, "bin", name) for p in (sys.exec_prefix, sys.prefix)
                      for name in ("python" + ver, "python3")]
    candidates += [shutil.which("python" + ver), shutil.which("python3")]
    for cand in candidates:
        if cand and os.path.isfile(cand) and _python_version(cand) == ver:
            return os.path.abspath(cand)
    return None


def _python_version(python):
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def nvidia_gpus(timeout=10):
    """Names of the NVIDIA GPUs ``nvidia-smi -L`` lists ([] without nvidia-smi or a GPU)."""
    smi = shutil.which("nvidia-smi")
    if smi is None and sys.platform.startswith("win"):
        cand = os.path.join(os.environ.get("ProgramFiles", r"C:\Program Files"), "NVIDIA Corporation",
                            "NVSMI", "nvidia-smi.exe")
        smi = cand if os.path.isfile(cand) else None
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("GPU")]


def recommended_variant(gpus=None):
    """('cuda' or 'cpu', why): CUDA when nvidia-smi lists a GPU (Linux/Windows), else CPU."""
    gpus = nvidia_gpus() if gpus is None else gpus
    if sys.platform == "darwin":
        return "cpu", "macOS: the PyPI wheel (CPU, Apple MPS) is the one there is"
    if gpus:
        return "cuda", "nvidia-smi lists %s" % "; ".join(gpus)
    return "cpu", "no NVIDIA GPU found (nvidia-smi %s)" % ("lists none" if shutil.which("nvidia-smi")
                                                           else "is not installed")


def variant_index_args(variant):
    """pip index arguments for the torch variant 'cpu' or 'cuda' on this platform."""
    if variant not in ("cpu", "cuda"):
        raise ValueError("VARIANT: %r is not cpu or cuda" % (variant,))
    if sys.platform.startswith("linux"):
        return ["--index-url", CPU_INDEX] if variant == "cpu" else []
    if sys.platform.startswith("win") and variant == "cuda":
        return ["--index-url", CUDA_INDEX]
    return []


def numpy_constraint():
    """'numpy==<version this Python imports>' (None without numpy): pip may then only pick that numpy."""
    try:
        import numpy
    except Exception:  # noqa: BLE001
        return None
    return "numpy==%s" % numpy.__version__


def torch_missing_message(exc=None, settings_dir=None):
    """A user-facing explanation of how to get torch (plain text, no placeholders in angle brackets:
    the QGIS log panels render HTML and drop them)."""
    reason = " (%s)" % exc if exc is not None else ""
    pin = numpy_constraint()
    pin_arg = ' "%s"' % pin if pin else ""
    folder = deps_dir(settings_dir)
    lines = [
        "ISMoE needs PyTorch (torch %s), which QGIS's Python cannot import%s." % (TORCH_VERSION, reason),
        "Install it from QGIS: Processing Toolbox > ISMoE soil moisture > 0 Setup > Install PyTorch "
        "(ismoe:installdependencies; headless: qgis_process run ismoe:installdependencies). It installs "
        "into %s, which the plugin adds to its path; no restart needed." % (folder or "the QGIS profile"),
    ]
    if sys.platform.startswith("win"):
        lines.append("Or by hand, in the OSGeo4W Shell: python -m pip install torch==%s%s"
                     % (TORCH_VERSION, pin_arg))
    else:
        repo = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
        if os.path.exists(os.path.join(repo, "Makefile")):
            venv = os.path.join(repo, ".venv")
            site = os.path.join(venv, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
            lines.append("From a clone of the repository: make install (or %s/bin/pip install torch==%s%s); "
                         "the clone's .venv is found automatically, or start QGIS with PYTHONPATH=%s."
                         % (venv, TORCH_VERSION, pin_arg, site))
        else:
            lines.append("Or by hand: python3 -m pip install --target %s torch==%s%s"
                         % (folder or "FOLDER", TORCH_VERSION, pin_arg))
    if pin:
        lines.append("The %s constraint keeps QGIS's numpy: a pip-upgraded numpy 2.x breaks the GDAL/rasterio "
                     "that QGIS uses." % pin)
    return "\n".join(lines)


# --------------------------------------------------------------------------- install
def split_args(text):
    """'--no-index --find-links /w' -> ['--no-index', '--find-links', '/w'] (shell-like quoting)."""
    if not text:
        return []
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return shlex.split(str(text), posix=not sys.platform.startswith("win"))


def _dist_name(spec):
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    return m.group(1) if m else None


def _normal(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def installed_dists(folder):
    """{normalised distribution name: (version, dist-info path)} of what pip put into folder."""
    out = {}
    for info in glob.glob(os.path.join(folder, "*.dist-info")):
        base = os.path.basename(info)[:-len(".dist-info")]
        name, _, version = base.partition("-")
        out[_normal(name)] = (version, info)
    return out


def top_level_modules(info):
    """Importable top-level names of an installed distribution (top_level.txt, else its RECORD)."""
    top = os.path.join(info, "top_level.txt")
    if os.path.isfile(top):
        with open(top, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if names:
            return names
    names = []
    record = os.path.join(info, "RECORD")
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            for line in f:
                first = line.split(",")[0].split("/")[0]
                if first.endswith(".py"):
                    first = first[:-3]
                if first and not first.endswith((".dist-info", ".data")) and first != "bin" \
                        and first.isidentifier() and first not in names:
                    names.append(first)
    return names


def remove_dists(folder, names, log=None):
    """Delete the distributions `names` (their files per RECORD, and their dist-info) from folder."""
    removed = []
    dists = installed_dists(folder)
    for name in names:
        hit = dists.get(_normal(name))
        if hit is None:
            continue
        version, info = hit
        paths = set()
        record = os.path.join(info, "RECORD")
        if os.path.isfile(record):
            with open(record, encoding="utf-8") as f:
                for line in f:
                    rel = line.split(",")[0]
                    if rel:
                        paths.add(rel.split("/")[0])
        paths.add(os.path.basename(info))
        for rel in sorted(paths):
            path = os.path.join(folder, rel)
            if rel in ("bin", "..") or not os.path.abspath(path).startswith(os.path.abspath(folder) + os.sep):
                continue
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
        removed.append("%s %s" % (name, version))
        if log:
            log("removed %s %s from the folder: QGIS keeps its own" % (name, version))
    return removed


def pip_command(python, target, specs, index_args, extra_args, constraint_file):
    cmd = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
           "--no-warn-script-location", "--progress-bar", "off", "--target", target]
    if constraint_file:
        cmd += ["--constraint", constraint_file]
    return cmd + list(index_args) + list(extra_args) + list(specs)


def _stage_progress(line, state):
    """Progress fraction (0..0.8) from pip's output lines: Collecting/Downloading/Installing."""
    text = line.strip()
    if text.startswith("Collecting ") or text.startswith("Looking in") or text.startswith("Processing "):
        state["collected"] += 1
        return min(0.6, 0.05 + 0.05 * state["collected"])
    if text.startswith("Downloading ") or text.startswith("Using cached"):
        return min(0.65, 0.1 + 0.05 * state["collected"])
    if text.startswith("Installing collected packages"):
        return 0.7
    if text.startswith("Successfully installed"):
        return 0.8
    return None


def _explain_failure(returncode, lines, specs, index_args, extra_args):
    tail = "\n".join(lines[-15:])
    text = "\n".join(lines)
    where = " ".join(index_args + [a for a in extra_args if a.startswith("http")]) or "PyPI"
    if "No module named pip" in text:
        return ("QGIS's Python has no pip (Debian/Ubuntu: apt install python3-pip; OSGeo4W: the python3-pip "
                "package). Nothing was installed.")
    if _NETWORK_PATTERNS.search(text):
        return ("pip could not download %s: no network connection to %s. Nothing was installed and the "
                "dependency folder is unchanged. Connect to the internet (or set a proxy in pip's "
                "configuration) and run this again, or download the wheels elsewhere and give "
                "--no-index --find-links FOLDER in 'Extra pip arguments'.\npip said:\n%s"
                % (" ".join(specs), where, tail))
    if _NOT_FOUND.search(text):
        return ("pip found no %s for this Python (%d.%d, %s) at %s. Nothing was installed.\npip said:\n%s"
                % (" ".join(specs), sys.version_info[0], sys.version_info[1], sys.platform, where, tail))
    return "pip failed (exit code %s). Nothing was installed.\npip said:\n%s" % (returncode, tail)


def _run_streamed(cmd, callbacks, poll=0.2, env=None):
    """Run cmd, handing each output line to callbacks.log; stop it on cancel. Returns (rc, lines)."""
    cb = ensure(callbacks)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, bufsize=1, env=env,
                            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    lines_q = queue.Queue()

    def reader():
        try:
            for line in proc.stdout:
                lines_q.put(line.rstrip("\n"))
        except (ValueError, OSError):  # closed after a cancel
            pass
        lines_q.put(None)

    threading.Thread(target=reader, daemon=True).start()
    lines, state, done = [], {"collected": 0}, False
    while not done:
        if cb.is_cancelled():
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            raise Cancelled("cancelled by the user: pip was stopped, nothing was installed")
        try:
            line = lines_q.get(timeout=poll)
        except queue.Empty:
            continue
        while line is not None:
            lines.append(line)
            if line.strip():
                cb.log(line)
            frac = _stage_progress(line, state)
            if frac is not None:
                cb.progress(frac)
            try:
                line = lines_q.get_nowait()
            except queue.Empty:
                break
        else:
            done = True
    rc = proc.wait()
    proc.stdout.close()
    return rc, lines


def check_imports(python, folder, modules, timeout=300):
    """Import `modules` in a fresh `python` with only `folder` added to its path (as the plugin does at
    load). Returns None when all import, else the error text."""
    if not modules:
        return None
    plugin_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
            "from ismoe_qgis._venv import add_deps_to_path\n"
            "add_deps_to_path(folder=%r)\n"
            "import importlib\n"
            "for m in %r:\n"
            "    importlib.import_module(m)\n" % (plugin_parent, folder, folder, list(modules)))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # what QGIS has, not the caller's extras (e.g. a repository venv)
    env.pop("ISMOE_DEPS_DIR", None)
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                             stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return "importing %s took more than %d s" % (", ".join(modules), timeout)
    if out.returncode == 0:
        return None
    return (out.stderr or out.stdout).strip().splitlines()[-1] if (out.stderr or out.stdout).strip() \
        else "exit code %d" % out.returncode


def install(target, specs=(TORCH_SPEC,), variant="cpu", extra_args=(), python=None, callbacks=None,
            verify=True):
    """pip-install `specs` for QGIS's Python into `target` (replaced as a whole, only on success).

    variant: 'cpu' or 'cuda' (pip index, see variant_index_args); the index is left out when
    extra_args name their own (--index-url, --no-index). extra_args: more pip arguments (a list or
    a string). Returns a dict: target, python, command, installed ({name: version}), removed (the
    numpy pip brought and that was taken out again). Raises InstallError (target unchanged) or
    Cancelled (target unchanged)."""
    cb = ensure(callbacks)
    specs = [s for s in (specs or []) if str(s).strip()]
    if not specs:
        raise InstallError("PACKAGES: nothing to install")
    if not target:
        raise InstallError("TARGET: no dependency folder (no QGIS profile folder known)")
    target = os.path.abspath(target)
    extra_args = split_args(extra_args)
    own_index = any(a.split("=")[0] in ("--index-url", "-i", "--no-index") for a in extra_args)
    index_args = [] if own_index else variant_index_args(variant)
    python = python or qgis_python()
    if python is None:
        raise InstallError("Cannot find QGIS's Python interpreter to run pip with (looked next to %s and on "
                           "PATH for python%d.%d)." % (sys.exec_prefix, *sys.version_info[:2]))
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise InstallError("TARGET: cannot create %s (%s)" % (parent, exc)) from None
    tmp = tempfile.mkdtemp(prefix=".%s-installing-" % os.path.basename(target), dir=parent)
    constraint = numpy_constraint()
    cfile = None
    try:
        if constraint:
            cfile = os.path.join(tmp, ".constraints.txt")
            with open(cfile, "w", encoding="utf-8") as f:
                f.write(constraint + "\n")
        staging = os.path.join(tmp, "target")
        cmd = pip_command(python, staging, specs, index_args, extra_args, cfile)
        cb.log("QGIS's Python: %s" % python)
        cb.log("running: %s" % " ".join(shlex.quote(c) for c in cmd))
        cb.progress(0.02)
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # pip resolves for QGIS's Python as it is, not for the caller's extras
        rc, lines = _run_streamed(cmd, cb, env=env)
        if rc != 0:
            raise InstallError(_explain_failure(rc, lines, specs, index_args, extra_args))
        removed = remove_dists(staging, NEVER_REPLACE, cb.log)
        dists = installed_dists(staging)
        wanted = [_normal(n) for n in map(_dist_name, specs) if n]
        missing = [n for n in wanted if n not in dists]
        if missing:
            raise InstallError("pip ended without installing %s. Nothing was installed." % ", ".join(missing))
        if verify:
            cb.progress(0.85)
            modules = [m for n in wanted if n in dists for m in top_level_modules(dists[n][1])]
            cb.log("checking in a fresh Python that %s import%s" % (", ".join(modules) or "the packages",
                                                                    "s" if len(modules) == 1 else ""))
            error = check_imports(python, staging, modules)
            if error:
                raise InstallError("The installed packages do not import (%s). Nothing was installed." % error)
        cb.check_cancel()
        cb.progress(0.95)
        if os.path.exists(cfile or ""):
            os.remove(cfile)
        old = None
        if os.path.lexists(target):
            old = os.path.join(tmp, "previous")
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except OSError as exc:
            if old is not None:
                os.replace(old, target)
            raise InstallError("Cannot move the new packages into %s (%s); the old folder is kept. Close "
                               "other QGIS windows (Windows locks loaded libraries) and run this again."
                               % (target, exc)) from None
        cb.progress(1.0)
        return {"target": target, "python": python, "command": cmd,
                "installed": {n: v for n, (v, _) in installed_dists(target).items()}, "removed": removed}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

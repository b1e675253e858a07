"""Shared pytest fixtures for ismoe_qgis.

Core tests (ismoe_qgis.data / ismoe_qgis.model) need none of these. QGIS tests ask for
``qgis_app`` (one QgsApplication per session, offscreen, isolated profile), then use
``run_alg`` (processing.run in this process) or ``qgis_process`` (the real binary).

Fixtures (see each docstring):
  repo_root            Path of the repository
  qgis_app             the session's QgsApplication, Processing initialised, provider 'ismoe' registered
  ismoe_provider       the registered IsmoeProvider (from the registry, fresh each call)
  recording_feedback   factory: recording_feedback(cancel_at_progress=None) -> RecordingFeedback
  run_alg              run_alg(alg_id, params, feedback=None, context=None) -> (results, feedback)
  qgis_env             dict: environment for a QGIS subprocess (same private profile as qgis_process,
                       plugin enabled, QGIS_PROCESS=<binary>)
  qgis_process         qgis_process(*args, timeout=600) -> QgisProcessResult(returncode, json, stdout, stderr)
                       qgis_process.run(alg_id, {NAME: value}, timeout=600) -> same (run ALG --json -- NAME=value ...)
  shared_data          Path of ../shared/data (skips when absent)
  demo_region          DemoRegion: dict (the manifest) with .path and .manifest; a 24x24 px, 2-year demo
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
VENV = REPO_ROOT / ".venv"
PLUGIN_NAME = "ismoe_qgis"
PROVIDER_ID = "ismoe"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Headless Qt, and an isolated QGIS profile folder for the in-process QgsApplication
# (QGIS 3.22 honours QGIS_CUSTOM_CONFIG_PATH; it must be set before QgsApplication starts).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="ismoe-tests-"))
os.environ["QGIS_CUSTOM_CONFIG_PATH"] = str(_SESSION_TMP / "qgis-inprocess-profile")

_QGIS_APP = None
_PROVIDER = None


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "qgis_process: runs the qgis_process binary")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skips without one); make gpu-check runs them")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


# --------------------------------------------------------------------------- QGIS in process
def register_ismoe_provider():
    """Register a fresh IsmoeProvider unless one is registered; return the registered one.

    After a test removes the provider (``registry.removeProvider``, which deletes it),
    call this again to register a new one.
    """
    from qgis.core import QgsApplication

    from ismoe_qgis.algorithms.provider import IsmoeProvider

    global _PROVIDER
    registry = QgsApplication.processingRegistry()
    if registry.providerById(PROVIDER_ID) is None:
        # Keep a Python reference: in 3.22 the registry does not keep the Python
        # subclass alive, and a collected provider answers id() == ''.
        _PROVIDER = IsmoeProvider()
        registry.addProvider(_PROVIDER)
    return registry.providerById(PROVIDER_ID)


def start_qgis():
    """Create (once) the QgsApplication, initialise Processing and register the provider."""
    global _QGIS_APP
    if _QGIS_APP is None:
        from qgis.core import QgsApplication

        app = QgsApplication.instance()
        if app is None:
            # GUI-enabled (widgets work) but offscreen: the dock widget tests share it.
            app = QgsApplication([], True)
            app.initQgis()
        plugins_dir = os.path.join(QgsApplication.pkgDataPath(), "python", "plugins")
        if plugins_dir not in sys.path:
            sys.path.append(plugins_dir)
        from processing.core.Processing import Processing

        Processing.initialize()
        _QGIS_APP = app
    register_ismoe_provider()
    return _QGIS_APP


@pytest.fixture(scope="session")
def qgis_app():
    """The session's QgsApplication (offscreen, isolated profile, Processing + 'ismoe' ready)."""
    return start_qgis()


@pytest.fixture
def ismoe_provider(qgis_app):
    """The 'ismoe' provider as registered now (re-registered if a test removed it)."""
    return register_ismoe_provider()


_FEEDBACK_CLASS = None


def recording_feedback_class():
    """QgsProcessingFeedback subclass that records messages and progress (built lazily)."""
    global _FEEDBACK_CLASS
    if _FEEDBACK_CLASS is None:
        from qgis.core import QgsProcessingFeedback

        class RecordingFeedback(QgsProcessingFeedback):
            """Records (kind, text) in .messages and progress values in .progress_values.

            cancel_at_progress: cancel as soon as progress reaches this percentage.
            """

            def __init__(self, cancel_at_progress=None):
                super().__init__()
                self.messages = []
                self.progress_values = []
                self.cancel_at_progress = cancel_at_progress
                self.progressChanged.connect(self._on_progress)

            def _on_progress(self, value):
                self.progress_values.append(float(value))
                if self.cancel_at_progress is not None and value >= self.cancel_at_progress:
                    self.cancel()

            def _record(self, kind, text):
                self.messages.append((kind, str(text)))

            def pushInfo(self, info):  # noqa: N802
                self._record("info", info)
                super().pushInfo(info)

            def pushWarning(self, warning):  # noqa: N802
                self._record("warning", warning)
                super().pushWarning(warning)

            def reportError(self, error, fatalError=False):  # noqa: N802, N803
                self._record("error", error)
                super().reportError(error, fatalError)

            def pushDebugInfo(self, info):  # noqa: N802
                self._record("debug", info)
                super().pushDebugInfo(info)

            def pushCommandInfo(self, info):  # noqa: N802
                self._record("command", info)
                super().pushCommandInfo(info)

            def pushConsoleInfo(self, info):  # noqa: N802
                self._record("console", info)
                super().pushConsoleInfo(info)

            def setProgressText(self, text):  # noqa: N802
                self._record("progress_text", text)
                super().setProgressText(text)

            @property
            def text(self):
                """All recorded messages, one per line."""
                return "\n".join(text for _, text in self.messages)

            def of_kind(self, kind):
                return [text for k, text in self.messages if k == kind]

        _FEEDBACK_CLASS = RecordingFeedback
    return _FEEDBACK_CLASS


@pytest.fixture
def recording_feedback(qgis_app):
    """Factory: ``recording_feedback(cancel_at_progress=None)`` -> RecordingFeedback."""
    return recording_feedback_class()


@pytest.fixture(scope="session")
def run_alg(qgis_app):
    """``run_alg(alg_id, params, feedback=None, context=None) -> (results, feedback)``.

    Runs through ``processing.run`` in this process; failures raise QgsProcessingException
    (use ``pytest.raises(QgsProcessingException, match="PATCH_SIZE")``). ``feedback``
    defaults to a new RecordingFeedback (``.messages``, ``.text``, ``.progress_values``).
    """
    import processing

    def _run(alg_id, params, feedback=None, context=None):
        if feedback is None:
            feedback = recording_feedback_class()()
        results = processing.run(alg_id, dict(params), feedback=feedback, context=context)
        return results, feedback

    return _run


# --------------------------------------------------------------------------- qgis_process
def find_qgis_process():
    """The qgis_process binary: $QGIS_PROCESS, /usr/bin/qgis_process.bin (Debian's
    /usr/bin/qgis_process wrapper passes --noversioncheck, which 3.22 rejects), or PATH."""
    for candidate in (os.environ.get("QGIS_PROCESS"), "/usr/bin/qgis_process.bin",
                      shutil.which("qgis_process.bin"), shutil.which("qgis_process")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def venv_site_packages():
    hits = sorted(VENV.glob("lib/python3*/site-packages"))
    return str(hits[0]) if hits else None


def make_qgis_env(profile_dir=None, base=None):
    """Environment for a QGIS subprocess: offscreen, venv site-packages on PYTHONPATH,
    QGIS_PLUGINPATH=<repo root>, and QGIS_CUSTOM_CONFIG_PATH=profile_dir when given."""
    env = dict(os.environ if base is None else base)
    env["QT_QPA_PLATFORM"] = "offscreen"
    site = venv_site_packages()
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if site and site not in paths:
        paths.insert(0, site)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    plugin_paths = [p for p in env.get("QGIS_PLUGINPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in plugin_paths:
        plugin_paths.insert(0, str(REPO_ROOT))
    env["QGIS_PLUGINPATH"] = os.pathsep.join(plugin_paths)
    if profile_dir is not None:
        env["QGIS_CUSTOM_CONFIG_PATH"] = str(profile_dir)
    return env


class QgisProcessResult(NamedTuple):
    returncode: int
    json: Optional[Any]
    stdout: str
    stderr: str


def parse_json_output(stdout):
    """The JSON object qgis_process --json printed, or None."""
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.find("{")
    while start != -1:
        try:
            return json.JSONDecoder().raw_decode(text[start:])[0]
        except ValueError:
            start = text.find("{", start + 1)
    return None


def format_param_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class QgisProcessRunner:
    """Runs the real qgis_process binary with this plugin enabled in an isolated profile."""

    def __init__(self, binary, profile_dir):
        self.binary = binary
        self.profile_dir = Path(profile_dir)
        self.env = make_qgis_env(self.profile_dir)
        self._enabled = False

    def _exec(self, args, timeout):
        proc = subprocess.run([self.binary, *map(str, args)], env=self.env, cwd=str(REPO_ROOT),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
        return QgisProcessResult(proc.returncode, parse_json_output(proc.stdout),
                                 proc.stdout, proc.stderr)

    def ensure_enabled(self):
        if not self._enabled:
            res = self._exec(["plugins", "enable", PLUGIN_NAME], timeout=300)
            if res.returncode != 0:
                raise RuntimeError("qgis_process plugins enable %s failed:\n%s\n%s"
                                   % (PLUGIN_NAME, res.stdout, res.stderr))
            self._enabled = True

    def __call__(self, *args, timeout=600):
        """``qgis_process("list")``, ``qgis_process("run", "ismoe:train", "--json", "--", "X=1")``."""
        self.ensure_enabled()
        return self._exec(args, timeout)

    def run(self, alg_id, params, timeout=600):
        """``run ALG --json -- NAME=value ...``; list/tuple values repeat NAME."""
        args = ["run", alg_id, "--json", "--"]
        for name, value in params.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            args.extend("%s=%s" % (name, format_param_value(v)) for v in values)
        return self(*args, timeout=timeout)


@pytest.fixture(scope="session")
def qgis_process():
    """The real qgis_process binary, plugin enabled in a session-private profile.

    ``qgis_process(*args, timeout=600)`` and ``qgis_process.run(alg_id, params)`` return
    ``QgisProcessResult(returncode, json, stdout, stderr)`` (a 4-tuple); ``json`` is the
    parsed ``--json`` output or None. ``qgis_process.env`` is the environment used and
    ``qgis_process.binary`` the executable.
    """
    binary = find_qgis_process()
    if binary is None:
        msg = "qgis_process is not installed (make install)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return QgisProcessRunner(binary, _SESSION_TMP / "qgis-process-profile")


@pytest.fixture(scope="session")
def qgis_env(qgis_process):
    """Environment dict for a subprocess running QGIS tools with the plugin: the same
    session-private profile as ``qgis_process`` (plugin enabled there), QGIS_PROCESS set."""
    qgis_process.ensure_enabled()
    env = dict(qgis_process.env)
    env["QGIS_PROCESS"] = qgis_process.binary
    return env


# --------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def shared_data():
    """Path of the real data in ../shared/data; skips when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data not present at %s" % SHARED_DATA)
    return SHARED_DATA


class DemoRegion(dict):
    """The demo manifest (a dict) plus ``.path`` (its folder) and ``.manifest``."""

    def __init__(self, path, manifest):
        super().__init__(manifest or {})
        self.path = Path(path)
        self.manifest = manifest


@pytest.fixture(scope="session")
def demo_region(tmp_path_factory):
    """A small demo region: generate_demo(out, size=24, years=2, seed=7), once per session."""
    try:
        from ismoe_qgis.data.demo import generate_demo
    except ImportError as exc:
        if getattr(exc, "name", None) in ("ismoe_qgis.data.demo",) or "generate_demo" in str(exc):
            pytest.skip("ismoe_qgis.data.demo.generate_demo is not available yet")
        raise
    out = tmp_path_factory.mktemp("demo_region")
    manifest = generate_demo(out, size=24, years=2, seed=7)
    return DemoRegion(out, manifest)

"""Base class of the ISMoE Processing algorithms: feedback adapter, torch check, errors.

Subclasses define name/displayName/helpIntro/initAlgorithm/processAlgorithm and
keep the business logic in the core (ismoe_qgis.data / ismoe_qgis.model), which they
call through ``self.run_core(fn, ..., callbacks=self.callbacks(feedback))``.
Never import torch at module level in an algorithm module: call ``self.require_torch()``
in processAlgorithm (or let the core import it inside ``run_core``).

Parameters are declared in initAlgorithm with the typed helpers (``addParameterInt``, ``addParameterEnum``,
``addParameterFile``, ...: keyword ``optional=``, ``advanced=``, ``help=``), and the help is assembled from the
same declarations: ``shortHelpString`` = ``helpIntro()``, then one entry per parameter declared with help (in
declaration order, headed by the label the form shows and the parameter's name), then ``helpOutro()``.
Parameters that several algorithms share are declared once, in the families of ``families.py``.
"""
import contextlib
import functools

from qgis.core import (QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingParameterBoolean,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterField, QgsProcessingParameterFile, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterMultipleLayers,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer, QgsProcessingParameterString)
from qgis.PyQt.QtCore import QCoreApplication

from ..core_callbacks import Callbacks, Cancelled
from ..deps import torch_missing_message  # one owner of the install advice
from . import presentation
from .enums import EnumNamesMixin
from .qgis_compat import (FILE_BEHAVIOR_FILE, NUMBER_DOUBLE, NUMBER_INTEGER, PARAM_FLAG_ADVANCED, PARAM_FLAG_HIDDEN,
                          PARAM_FLAG_OPTIONAL, add_param_flags)


# --------------------------------------------------------------------------- signals
SIGNALS = ("SIGINT", "SIGTERM")


class _SignalState:
    def __init__(self):
        self.name = None          # the first signal received, e.g. 'SIGTERM'
        self.count = 0


def _c_action(signum):
    """The process's C-level action of `signum` (an opaque struct sigaction), to put back what Python cannot
    (a handler that QGIS installed in C, such as qgis_process's SIGINT watcher). None where unavailable."""
    import os
    if os.name != "posix":
        return None
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(1024)
        return (libc, buf) if libc.sigaction(int(signum), None, buf) == 0 else None
    except Exception:  # noqa: BLE001 - no libc sigaction: leave that signal alone
        return None


@contextlib.contextmanager
def signals_as_cancel(feedback):
    """While the block runs in the main thread: SIGINT (Ctrl+C) and SIGTERM (kill, timeout) cancel
    `feedback`, so the core stops within one batch or tile (train keeps the best model, predict removes its
    temporaries); a second signal raises KeyboardInterrupt (stop at once; the staging is still cleaned on the
    way out). The previous handlers (Python's or a C one) are put back at the end. Outside the main thread
    (the QGIS desktop runs algorithms in worker threads) nothing is changed."""
    import signal
    import threading
    state = _SignalState()
    if feedback is None or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, _frame):
        state.count += 1
        name = signal.Signals(signum).name
        if state.count == 1:
            state.name = name
            try:
                feedback.pushWarning(f"{name} received: stopping like Cancel, within one batch or tile (send it "
                                     f"again to stop at once)")
            except Exception:  # noqa: BLE001 - reporting must not break the handler
                pass
            feedback.cancel()
        else:
            raise KeyboardInterrupt(name)

    saved = []
    try:
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            old = signal.getsignal(signum)
            c_old = _c_action(signum) if old is None else None
            if old is None and c_old is None:
                continue                          # a C handler we could not put back: leave it
            try:
                signal.signal(signum, handler)
            except (ValueError, OSError):
                continue
            saved.append((signum, old, c_old))
        yield state
    finally:
        for signum, old, c_old in reversed(saved):
            try:
                if old is not None:
                    signal.signal(signum, old)
                else:
                    signal.signal(signum, signal.SIG_DFL)
                    libc, buf = c_old
                    libc.sigaction(int(signum), buf, None)
            except (ValueError, OSError):
                pass


class IsmoeAlgorithm(EnumNamesMixin, presentation.Presented, QgsProcessingAlgorithm):
    """Common behaviour of the ISMoE algorithms (their group, tags, icon and help URL: presentation.Presented)."""

    # -- every run: signals like Cancel, output locks (issue 13) ---------------------------
    def __init_subclass__(cls, **kwargs):
        """Wrap each subclass's processAlgorithm in ``_guarded_run``: SIGINT/SIGTERM act like Cancel while it
        runs (qgis_process, processing.run in a script), and the output locks it takes (``lock_output``) are
        released when it ends, however it ends."""
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("processAlgorithm")
        if fn is not None and not getattr(fn, "_ismoe_guarded", False):
            @functools.wraps(fn)
            def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
                return self._guarded_run(fn, parameters, context, feedback)
            processAlgorithm._ismoe_guarded = True
            cls.processAlgorithm = processAlgorithm

    #: what an interrupted run left, for the message (an algorithm that keeps something says so)
    interrupt_note = None
    _locks = None
    _signals = None

    def _guarded_run(self, fn, parameters, context, feedback):
        self.interrupt_note = None
        with contextlib.ExitStack() as locks, signals_as_cancel(feedback) as sig:
            self._locks, self._signals = locks, sig
            try:
                result = fn(self, parameters, context, feedback)
            except KeyboardInterrupt:      # a second signal: stopped at once (the staging is cleaned on the way out)
                raise QgsProcessingException(self._interrupted_message(sig, forced=True)) from None
            except QgsProcessingException as exc:
                if sig.name:
                    raise QgsProcessingException(self._interrupted_message(sig, detail=str(exc))) from None
                raise
            finally:
                self._locks = None
            if sig.name:
                raise QgsProcessingException(self._interrupted_message(sig))
            return result

    def _interrupted_message(self, sig, detail=None, forced=False):
        how = (f"interrupted by {sig.name} twice: stopped at once" if forced else
               f"interrupted by {sig.name}: stopped like Cancel")
        note = self.interrupt_note
        if not note:
            note = "no output was written (the outputs are as before the run) and its temporary files were removed"
            if detail and "cancel" not in detail.lower():
                note = detail
        return f"{how}; {note}"

    @property
    def interrupted_by(self):
        """'SIGINT' / 'SIGTERM' when a signal stopped the current run, else None."""
        sig = getattr(self, "_signals", None)
        return sig.name if sig is not None else None

    def lock_output(self, path, param, feedback=None):
        """Take the one-writer lock of output `path` (parameter `param`) until processAlgorithm ends
        (fileutil.output_lock): another run writing it makes this one fail at once, naming that run."""
        if not path:
            return None
        from ..fileutil import OutputBusyError, output_lock
        log = (feedback.pushInfo if feedback is not None else None)
        try:
            return self._locks.enter_context(output_lock(path, param, f"ismoe:{self.name()}", log))
        except OSError as exc:
            raise QgsProcessingException(str(exc) if isinstance(exc, OutputBusyError) or str(exc).startswith(param)
                                         else f"{param}: cannot lock '{path}' ({exc.strerror or exc})") from None

    def createInstance(self):  # noqa: N802 (QGIS API name)
        return type(self)()

    def tr(self, text):
        return QCoreApplication.translate(type(self).__name__, text)

    # -- parameters: typed declarations that carry their help (issue 12 item 7) --------------
    # Each helper builds the QGIS definition from the same arguments as the plain constructor (arguments
    # left out keep QGIS's defaults), sets the flags (optional/advanced/hidden: qgis_compat, 3.22 and later)
    # and records `help` (a translated string, or a callable that takes the algorithm and returns one, for help
    # that depends on the machine, called when the help is shown) for shortHelpString. They return the definition.
    def addParameterDefinition(self, definition, optional=False, advanced=False, hidden=False,  # noqa: N802
                               help=None):
        """Add a ready QgsProcessingParameterDefinition with these flags and help (every helper ends here)."""
        flags = [f for f, on in ((PARAM_FLAG_OPTIONAL, optional), (PARAM_FLAG_ADVANCED, advanced),
                                 (PARAM_FLAG_HIDDEN, hidden)) if on]
        if flags:
            add_param_flags(definition, *flags)
        name = definition.name()
        if self.addParameter(definition) and help:
            if self.__dict__.get("_parameter_help") is None:
                self._parameter_help = {}
            self._parameter_help[name] = help
        return definition

    @staticmethod
    def _range(minimum, maximum):
        out = {}
        if minimum is not None:
            out["minValue"] = minimum
        if maximum is not None:
            out["maxValue"] = maximum
        return out

    def addParameterInt(self, name, label, default=None, min=None, max=None, **kw):  # noqa: N802
        """An integer (QgsProcessingParameterNumber, Integer); min/max: QGIS's limits when None."""
        return self.addParameterDefinition(QgsProcessingParameterNumber(
            name, label, NUMBER_INTEGER, default, False, **self._range(min, max)), **kw)

    def addParameterFloat(self, name, label, default=None, min=None, max=None, **kw):  # noqa: N802
        """A floating-point number (QgsProcessingParameterNumber, Double)."""
        return self.addParameterDefinition(QgsProcessingParameterNumber(
            name, label, NUMBER_DOUBLE, default, False, **self._range(min, max)), **kw)

    def addParameterBool(self, name, label, default=False, **kw):  # noqa: N802
        return self.addParameterDefinition(QgsProcessingParameterBoolean(name, label, default), **kw)

    def addParameterEnum(self, name, label, options, default=0, multiple=False, **kw):  # noqa: N802
        """A choice among `options` (an option list of ismoe_qgis.options); the value is an index, and the
        option names are accepted too (enums.EnumNamesMixin). multiple: a list of indices."""
        return self.addParameterDefinition(QgsProcessingParameterEnum(
            name, label, list(options), multiple, default), **kw)

    def addParameterString(self, name, label, default=None, multiLine=False, **kw):  # noqa: N802
        return self.addParameterDefinition(QgsProcessingParameterString(name, label, default, multiLine), **kw)

    def addParameterFile(self, name, label, behavior=FILE_BEHAVIOR_FILE, extension=None, fileFilter=None,  # noqa: N802
                         default=None, **kw):
        """An existing file (or folder: behavior=qgis_compat.FILE_BEHAVIOR_FOLDER), by extension or filter."""
        given = {k: v for k, v in (("extension", extension), ("fileFilter", fileFilter)) if v is not None}
        return self.addParameterDefinition(QgsProcessingParameterFile(
            name, label, behavior, defaultValue=default, **given), **kw)

    def addParameterFileDestination(self, name, label, fileFilter=None, default=None,  # noqa: N802
                                    createByDefault=True, **kw):
        given = {"fileFilter": fileFilter} if fileFilter is not None else {}
        return self.addParameterDefinition(QgsProcessingParameterFileDestination(
            name, label, defaultValue=default, createByDefault=createByDefault, **given), **kw)

    def addParameterFolderDestination(self, name, label, default=None, createByDefault=True, **kw):  # noqa: N802
        return self.addParameterDefinition(QgsProcessingParameterFolderDestination(
            name, label, default, False, createByDefault), **kw)

    def addParameterFeatureSource(self, name, label, types, default=None, **kw):  # noqa: N802
        """A vector source of the qgis_compat SOURCE_* `types`."""
        return self.addParameterDefinition(QgsProcessingParameterFeatureSource(
            name, label, list(types), default), **kw)

    def addParameterField(self, name, label, parent, default=None, **kw):  # noqa: N802
        """A field of the source or layer parameter named `parent`."""
        return self.addParameterDefinition(QgsProcessingParameterField(name, label, default, parent), **kw)

    def addParameterRasterLayer(self, name, label, default=None, **kw):  # noqa: N802
        return self.addParameterDefinition(QgsProcessingParameterRasterLayer(name, label, default), **kw)

    def addParameterMultipleLayers(self, name, label, layerType, default=None, **kw):  # noqa: N802
        """Several layers (or files: qgis_compat.SOURCE_FILE) of `layerType`."""
        return self.addParameterDefinition(QgsProcessingParameterMultipleLayers(
            name, label, layerType, default), **kw)

    def addParameterExtent(self, name, label, default=None, **kw):  # noqa: N802
        return self.addParameterDefinition(QgsProcessingParameterExtent(name, label, default), **kw)

    # -- help from the declarations ----------------------------------------------------------
    def helpIntro(self):  # noqa: N802
        """The paragraph(s) before the parameters: what the algorithm does (translated)."""
        return ""

    def helpOutro(self):  # noqa: N802
        """The paragraph(s) after the parameters (outputs, cancelling, ...); default none."""
        return ""

    def _declared(self):
        """This instance when initAlgorithm has run on it, else an initialised fresh one (for the help)."""
        if self.parameterDefinitions() or self.__dict__.get("_parameter_help") is not None:
            return self
        fresh = type(self)()
        fresh.initAlgorithm({})
        return fresh

    def _help_entries(self):
        """[(name, help text)] of the parameters declared with help, in declaration order."""
        declared = self._declared()
        helps = declared.__dict__.get("_parameter_help") or {}
        out = []
        for definition in declared.parameterDefinitions():
            text = helps.get(definition.name())
            text = text(declared) if callable(text) else text
            if text:
                out.append((definition.name(), text))
        return out, declared

    def helpParameters(self):  # noqa: N802
        """[(label, help text)] of the parameters declared with help, in declaration order; the label is the
        one the form shows."""
        entries, declared = self._help_entries()
        return [(declared.parameterDefinition(name).description(), text) for name, text in entries]

    def shortHelpString(self):  # noqa: N802
        """helpIntro, one entry per parameter with help ('<b>Label</b> (NAME): ...'; plain text for
        qgis_process), helpOutro: presentation.parameter_help."""
        entries, declared = self._help_entries()
        return presentation.parameter_help(declared, self.helpIntro(), entries, self.helpOutro())

    # -- parameter checks ---------------------------------------------------------------
    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        """Our words first, then QGIS's check (which also accepts NETCDF:"f.nc":var strings as rasters).

        Every rejected value says what is allowed (the range, the choices) or which file is missing or
        unreadable (common.parameter_problems), instead of QGIS's bare 'Incorrect parameter value for X'.
        Layers are loaded with GDAL's PAM off, so checking an input writes no .aux.xml beside it.
        Subclasses add their own checks with ``self.extra_parameter_problems``."""
        from .common import check_values_with_gdal_strings, parameter_problems
        from ..data.rasters import pam_disabled
        with pam_disabled():
            problems = parameter_problems(self, parameters, context)
            if not problems:
                problems = self.extra_parameter_problems(parameters, context)
        if problems:
            return False, "\n".join(problems)
        return check_values_with_gdal_strings(self, parameters, context)

    def extra_parameter_problems(self, parameters, context):
        """Algorithm-specific checks before processAlgorithm: a list of 'NAME: message' (default none)."""
        return []

    # -- helpers for processAlgorithm -------------------------------------------------
    @staticmethod
    def callbacks(feedback):
        """Adapt a QgsProcessingFeedback (or None) into core ``Callbacks``."""
        if feedback is None:
            return Callbacks()

        def progress(fraction):
            try:
                value = float(fraction) * 100.0
            except (TypeError, ValueError):
                return
            feedback.setProgress(min(100.0, max(0.0, value)))

        def log(msg):
            msg = str(msg)
            (feedback.pushWarning if msg.startswith("warning:") else feedback.pushInfo)(msg)

        return Callbacks(progress=progress, log=log, is_cancelled=feedback.isCanceled)

    @staticmethod
    def require_torch():
        """Return the torch module, or raise QgsProcessingException saying how to install it."""
        try:
            import torch  # noqa: PLC0415
        except Exception as exc:  # noqa: BLE001 - ImportError, OSError (broken libs), ...
            raise QgsProcessingException(torch_missing_message(exc)) from None
        return torch

    @staticmethod
    def param_error(name, message):
        """A QgsProcessingException whose message names the parameter: 'NAME: message'."""
        return QgsProcessingException("%s: %s" % (name, message))

    @staticmethod
    def run_core(fn, *args, **kwargs):
        """Call a core function; turn its expected errors into QgsProcessingException."""
        try:
            return fn(*args, **kwargs)
        except QgsProcessingException:
            raise
        except Cancelled as exc:
            raise QgsProcessingException(str(exc) or "cancelled by the user") from None
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "torch":
                raise QgsProcessingException(torch_missing_message(exc)) from None
            raise
        except KeyError as exc:
            raise QgsProcessingException(str(exc.args[0]) if exc.args else repr(exc)) from exc
        except (ValueError, OSError, RuntimeError) as exc:
            raise QgsProcessingException(str(exc) or type(exc).__name__) from exc

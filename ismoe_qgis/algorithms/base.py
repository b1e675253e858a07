"""Base class of the ISMoE Processing algorithms: feedback adapter, torch check, errors.

Subclasses define name/displayName/shortHelpString/initAlgorithm/processAlgorithm and
keep the business logic in the core (ismoe_qgis.data / ismoe_qgis.model), which they
call through ``self.run_core(fn, ..., callbacks=self.callbacks(feedback))``.
Never import torch at module level in an algorithm module: call ``self.require_torch()``
in processAlgorithm (or let the core import it inside ``run_core``).
"""
from qgis.core import QgsProcessingAlgorithm, QgsProcessingException
from qgis.PyQt.QtCore import QCoreApplication

from ..core_callbacks import Callbacks, Cancelled
from ..deps import torch_missing_message  # one owner of the install advice
from .enums import EnumNamesMixin


class IsmoeAlgorithm(EnumNamesMixin, QgsProcessingAlgorithm):
    """Common behaviour of the ISMoE algorithms."""

    GROUP = "ISMoE"
    GROUP_ID = "ismoe"

    def createInstance(self):  # noqa: N802 (QGIS API name)
        return type(self)()

    def group(self):
        return self.tr(self.GROUP)

    def groupId(self):  # noqa: N802
        return self.GROUP_ID

    def tr(self, text):
        return QCoreApplication.translate(type(self).__name__, text)

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

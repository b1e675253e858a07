"""ismoe:installdependencies: pip-install PyTorch for QGIS's own Python into the plugin-private folder.

Thin glue over ismoe_qgis.deps.install (subprocess pip, progress, cancel, numpy kept, nothing
half-installed). On success the folder is added to sys.path at once (no restart) and at every load.
"""
import os
import sys

from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingOutputFolder, QgsProcessingOutputString

from ..options import TORCH_VARIANTS as VARIANT_LABELS  # auto: CUDA when nvidia-smi finds an NVIDIA GPU, else CPU
from .. import deps
from ..core_callbacks import Cancelled
from .base import IsmoeAlgorithm


def default_target():
    return deps.deps_dir(QgsApplication.qgisSettingsDirPath())


class InstallDependenciesAlgorithm(IsmoeAlgorithm):  # enum names via the base class: VARIANT=cpu or 1
    VARIANT, PACKAGES, PIP_ARGS, TARGET = "VARIANT", "PACKAGES", "PIP_ARGS", "TARGET"
    CHECK_ONLY = "CHECK_ONLY"

    def name(self):
        return "installdependencies"

    def displayName(self):  # noqa: N802
        return self.tr("Install PyTorch (dependencies)")

    # No FlagHideFromModeler: in 3.22 FlagDeprecated is HideFromToolbox | HideFromModeler, and
    # `qgis_process list` leaves out every algorithm with either bit set.

    # The help names this machine's folder and the variant that fits it; scripts/build_help.py sets
    # ISMOE_HELP_GENERIC for pages that fit every machine (no paths or GPU verdicts of the one that builds them).
    @staticmethod
    def _help_folder():
        if os.environ.get("ISMOE_HELP_GENERIC"):
            return "QGIS profile folder/python/ismoe_deps/py%d.%d" % sys.version_info[:2]
        return default_target() or "the profile folder"

    @staticmethod
    def _help_variant():
        if os.environ.get("ISMOE_HELP_GENERIC"):
            return "shown when this runs in QGIS", "nvidia-smi decides"
        return deps.recommended_variant()       # runs nvidia-smi: only when the help is shown

    def helpIntro(self):  # noqa: N802
        return self.tr(
            "Installs PyTorch (torch %s) for QGIS's own Python with pip, into a folder of your QGIS profile "
            "that only this plugin uses (%s). The plugin adds that folder to Python's path at every load, and "
            "at once when this ends: no restart needed. QGIS's numpy is never replaced (pip is constrained to "
            "the numpy QGIS has, and any numpy pip brings is removed again). Nothing is half-installed: pip "
            "installs into a temporary folder next to it, which replaces the old folder only when pip "
            "succeeded and the packages import. Cancel stops pip. Needs an internet connection (about 200 MB "
            "for the CPU wheel, several GB for CUDA) unless PIP_ARGS point at local wheels."
        ) % (deps.TORCH_VERSION, self._help_folder())

    def helpOutro(self):  # noqa: N802
        return self.tr("Outputs: FOLDER (the dependency folder) and INSTALLED (name==version of what is in it).")

    def _variant_help(self):
        return self.tr(
            "auto (CUDA when nvidia-smi finds an NVIDIA GPU, else CPU), cpu or cuda. For this machine: %s (%s). "
            "The CUDA wheel only helps with an NVIDIA GPU and its driver; on Linux it is PyPI's torch, the CPU "
            "wheel comes from PyTorch's CPU index.") % self._help_variant()

    def initAlgorithm(self, config=None):  # noqa: N802
        tr = self.tr
        self.addParameterEnum(self.VARIANT, tr("PyTorch build"), VARIANT_LABELS, default=0,
                              help=type(self)._variant_help)    # called with the algorithm when the help is shown
        self.addParameterString(self.PACKAGES, tr("Packages (pip requirements)"), deps.TORCH_SPEC, advanced=True,
                                help=tr("the pip requirements, separated by spaces (default %s).") % deps.TORCH_SPEC)
        self.addParameterString(self.PIP_ARGS, tr("Extra pip arguments"), "", optional=True, advanced=True, help=tr(
            "more pip arguments, e.g. '--no-index --find-links /path/to/wheels' for an offline install, or "
            "'--proxy http://host:port'. An --index-url or --no-index here replaces the VARIANT's index."))
        # a string, not a folder parameter: the folder need not exist yet
        self.addParameterString(self.TARGET, tr("Dependency folder (empty: the profile's)"), "", optional=True,
                                advanced=True, help=tr(
                                    "the folder to install into (default: the profile folder above). Replaced as a "
                                    "whole."))
        self.addParameterBool(self.CHECK_ONLY, tr("Only check, install nothing"), False, optional=True, help=tr(
            "only report what is installed and which variant fits; install nothing."))
        self.addOutput(QgsProcessingOutputFolder("FOLDER", tr("Dependency folder")))
        self.addOutput(QgsProcessingOutputString("INSTALLED", tr("Installed packages")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        target = self.parameterAsString(parameters, self.TARGET, context) or default_target()
        specs = (self.parameterAsString(parameters, self.PACKAGES, context) or deps.TORCH_SPEC).split()
        extra = self.parameterAsString(parameters, self.PIP_ARGS, context)
        choice = VARIANT_LABELS[self.parameterAsEnum(parameters, self.VARIANT, context)]
        recommended, why = deps.recommended_variant()
        variant = recommended if choice == "auto" else choice
        feedback.pushInfo("PyTorch build: %s (%s; fits this machine: %s, %s)"
                          % (variant, "chosen" if choice != "auto" else "auto", recommended, why))
        if choice == "cuda" and recommended != "cuda":
            feedback.pushWarning("warning: the CUDA build was asked for but %s; it will run on the CPU" % why)
        feedback.pushInfo("Dependency folder: %s" % target)
        if self.parameterAsBool(parameters, self.CHECK_ONLY, context):
            have = deps.installed_dists(target) if target else {}
            listing = ", ".join("%s==%s" % (n, v) for n, (v, _) in sorted(have.items()))
            feedback.pushInfo("Installed there: %s" % (listing or "nothing"))
            feedback.pushInfo("torch importable now: %s" % ("yes" if _torch_spec() else "no"))
            return {"FOLDER": target, "INSTALLED": listing}
        try:
            result = deps.install(target, specs, variant=variant, extra_args=extra,
                                  callbacks=self.callbacks(feedback))
        except deps.InstallError as exc:
            raise QgsProcessingException(str(exc)) from None
        except Cancelled as exc:
            raise QgsProcessingException(str(exc)) from None
        added = deps.add_deps_to_path(folder=result["target"])
        listing = ", ".join("%s==%s" % kv for kv in sorted(result["installed"].items()))
        feedback.pushInfo("Installed into %s: %s" % (result["target"], listing))
        if result["removed"]:
            feedback.pushInfo("Kept QGIS's own %s" % ", ".join(result["removed"]))
        if added:
            feedback.pushInfo("Added %s to Python's path: ISMoE can use it now" % added)
        if "torch" in sys.modules and any(s.split("=")[0].strip().lower() == "torch" for s in specs):
            feedback.pushWarning("warning: torch was already loaded in this QGIS; restart QGIS to use the new one")
        return {"FOLDER": result["target"], "INSTALLED": listing}


def _torch_spec():
    import importlib.util
    return importlib.util.find_spec("torch") is not None

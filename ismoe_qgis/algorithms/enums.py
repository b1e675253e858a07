"""Enum parameters that accept their option names as well as indices (MODEL=cnn_lstm or MODEL=1).

Why not ``QgsProcessingParameterEnum.setUsesStaticStrings(True)`` (QGIS >= 3.18)? A static-string
enum then refuses indices (measured on 3.22: ``checkValueIsAcceptable(1)`` and ``('1')`` are False),
so existing qgis_process calls, scripts and saved Model Builder models that pass indices would break,
and ``parameterAsEnum`` returns 0 for a name. Instead the value is mapped before QGIS sees it:

- ``map_enum_names(alg, parameters)`` returns a copy of ``parameters`` in which each enum value given
  as an option name (case and '-'/' '/'_' insensitive, e.g. 'cnn_lstm', 'CNN-LSTM', 'Day of year',
  'day_of_year'; a list or a comma-separated string for multiple-choice enums) is replaced by its
  index. Indices, unknown names and other parameters pass unchanged (unknown names are then refused
  by QGIS's own check, naming the parameter).
- ``EnumNamesMixin`` applies it in ``checkParameterValues`` (qgis_process and processing.run check
  with it), ``parameterAsEnum`` and ``parameterAsEnums`` (what processAlgorithm reads). Subclasses
  that override ``checkParameterValues`` themselves get it wrapped (``__init_subclass__``), so the
  mapping happens whichever class's check runs.

Use: ``class IsmoeAlgorithm(EnumNamesMixin, QgsProcessingAlgorithm)`` (the mixin first).
"""
import re

_ENUM = "enum"


def _norm(text):
    return re.sub(r"[\s_\-]+", "_", str(text).strip()).lower()


def option_index(options, value):
    """Index of `value` among `options` by name (normalised), or None."""
    want = _norm(value)
    for i, opt in enumerate(options):
        if _norm(opt) == want:
            return i
    return None


def _map_one(options, value):
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+", text) or not text:
            return value
        idx = option_index(options, text)
        return idx if idx is not None else value
    return value


def map_enum_value(definition, value):
    """One enum parameter's value with option names replaced by indices (else unchanged)."""
    options = definition.options()
    if isinstance(value, (list, tuple)):
        return [_map_one(options, v) for v in value]
    if isinstance(value, str) and definition.allowMultiple() and "," in value \
            and option_index(options, value) is None:
        parts = [_map_one(options, v) for v in value.split(",")]
        if all(isinstance(p, int) or re.fullmatch(r"\s*-?\d+\s*", str(p)) for p in parts):
            return [int(p) for p in parts]
        return value
    return _map_one(options, value)


def _uses_static_strings(definition):
    try:
        return bool(definition.usesStaticStrings())
    except AttributeError:  # QGIS < 3.18
        return False


def map_enum_names(alg, parameters, names=None):
    """A copy of `parameters` with enum option names replaced by indices (see module docstring).

    names: only these parameters (default: every enum parameter of `alg`)."""
    if not parameters:
        return parameters
    out = None
    for definition in alg.parameterDefinitions():
        if definition.type() != _ENUM or _uses_static_strings(definition):
            continue
        name = definition.name()
        if (names is not None and name not in names) or name not in parameters:
            continue
        value = parameters[name]
        mapped = map_enum_value(definition, value)
        if mapped is not value and mapped != value:
            if out is None:
                out = dict(parameters)
            out[name] = mapped
    return parameters if out is None else out


def _wrap_check(check):
    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        return check(self, map_enum_names(self, parameters), context)

    checkParameterValues.__doc__ = check.__doc__
    checkParameterValues._maps_enum_names = True
    return checkParameterValues


class EnumNamesMixin:
    """Mix into a QgsProcessingAlgorithm subclass (before it): enum parameters accept option names."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("checkParameterValues")
        if own is not None and not getattr(own, "_maps_enum_names", False):
            cls.checkParameterValues = _wrap_check(own)

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        return super().checkParameterValues(map_enum_names(self, parameters), context)

    checkParameterValues._maps_enum_names = True

    def parameterAsEnum(self, parameters, name, context):  # noqa: N802 (QGIS API name)
        return super().parameterAsEnum(map_enum_names(self, parameters, (name,)), name, context)

    def parameterAsEnums(self, parameters, name, context):  # noqa: N802 (QGIS API name)
        return super().parameterAsEnums(map_enum_names(self, parameters, (name,)), name, context)

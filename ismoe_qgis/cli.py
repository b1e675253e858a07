"""Command line for cluster jobs and scripts: ``python -m ismoe_qgis prepare|train|predict|evaluate``.

The same core functions as the Processing algorithms (``data.prepare.prepare_dataset``, ``model.train.train``,
``model.predict.predict_layers``, ``model.evaluate.evaluate``), and no QGIS or Qt import anywhere on this path.

One source of truth for the options: besides the few inputs the algorithms read from QGIS layers (factor
rasters, stations, regions), every option is derived from the core itself, so that a new core setting is
an option here without an edit:
  train     every field of ``model.train.TrainConfig`` (type and default from the dataclass), every keyword of
            ``train()`` beyond the cube, and the model options of ``model.networks.ModelConfig``;
  prepare / predict / evaluate
            every plain keyword (int, float, bool, str) of the core function's signature.
An option is named after the Processing parameter (``--learning-rate`` = LEARNING_RATE, ``--ensemble`` =
ENSEMBLE), with the core's name as an alias where it differs (``--lr``). Choices come from the option lists
of ``ismoe_qgis/options.py`` (``MIXTURES``, ``SPLITS``, ...).

``--config run.toml``: the same options as keys (``learning_rate = 0.004`` or ``learning-rate``); a table
``[train]`` (``[prepare]``, ...) applies to that command only and each of its keys must be an option of it;
top-level keys apply to every command that has that option (so one file can drive the whole chain) and each
must be an option of some command. Any other key or table is an error naming it. Options on the command line
win over the file, the table over the top level. Relative paths are relative to the working folder.

Progress and log lines go to stderr; the result (paths, scores) is one JSON object on stdout.
Exit status: 0 done, 2 bad input (one line naming the option or file), 130 interrupted (SIGINT; 143 on
SIGTERM: the core stops at its next batch or tile, a training keeps its best model so far, a prediction
leaves no partial output; a second signal stops at once), 1 anything else (with a traceback).

Under ``torchrun`` (``torchrun --nproc_per_node=N -m ismoe_qgis train ...``) every rank runs this command and
``train()`` does the distributed part; only rank 0 prints progress and the result, the other ranks print
their warnings and errors prefixed with ``[rank r]``.
"""
import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import signal
import sys
import time
import typing

from .data import names

PROG = "python -m ismoe_qgis"
COMMANDS = ("prepare", "train", "predict", "evaluate")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_SIGINT = 0, 1, 2, 130

ABOUT = {
    "prepare": "factor rasters + a soil-moisture target (raster series or stations) -> dataset cube "
               "(ismoe:preparedataset)",
    "train": "dataset cube -> model file (ismoe:train); the command torchrun starts",
    "predict": "model + factor rasters -> sm.tif, weight_<factor>.tif, dominant_factor.tif, prediction.json "
               "(ismoe:predict)",
    "evaluate": "models (+ reference products, baselines) on a dataset -> metrics, report (ismoe:evaluate)",
}

# The core's keyword -> the Processing parameter's name, where they differ (the option is its lower case,
# the core's name an alias)
PARAMETER_NAMES = {"lr": "learning_rate", "schedule": "lr_schedule", "members": "ensemble", "model_type": "model",
                   "start": "start_date"}

# Keywords that are not plain options: inputs the CLI builds itself or objects
SKIP = {
    "prepare": {"factors", "target", "stations", "callbacks"},
    "train": {"cube", "out_path", "model_type", "cfg", "model_options", "callbacks", "log_path", "fold_labels"},
    "predict": {"model_path", "layers", "out_dir", "extent", "grid", "callbacks"},
    "evaluate": {"cube", "models", "references", "period", "region_labels", "out_dir", "callbacks", "baselines",
                 "importance_kinds"},
}
# ModelConfig fields that are training options (the rest come from the cube or are written by train())
MODEL_OPTIONS = ("hidden", "conv_channels", "router_hidden", "dropout", "router_input", "mask_silent", "mixture",
                 "memory", "spin_up", "members")
# option -> default where the algorithm's differs from the dataclass's: SPIN_UP is 365 days (used with
# --memory stateful only; a windowed model has none)
DEFAULT_OVERRIDES = {("train", "spin_up"): 365}
DATE_OPTIONS = {"start", "val_start", "test_start", "date_from", "date_to"}

HELP = {
    "factor": "a factor raster: PATH or NAME=PATH (GeoTIFF, NetCDF, NETCDF:\"file.nc\":variable; each band one "
              "day); NAME is the variable name (default: the file name), repeat for every variable (FACTORS)",
    "factor_groups": "which variables form each factor, e.g. 'snow=snow_depth,snow_cover;radiation=net_solar' "
                     "(FACTOR_GROUPS; default: every variable its own factor)",
    "target": "soil-moisture raster series (gridded target) (TARGET)",
    "stations": "station points instead of --target: a vector file (GeoPackage, shapefile, GeoJSON) or a CSV "
                "with id and x/lon, y/lat columns (STATIONS)",
    "stations_crs": "CRS of the coordinates of a --stations CSV (default EPSG:4326, lon/lat)",
    "station_id_field": "id field of --stations (STATION_ID_FIELD)",
    "station_table": "CSV of the stations' daily soil moisture: id, date, value columns (STATION_TABLE)",
    "table_id_field": "station id column of --station-table (TABLE_ID_FIELD)",
    "table_date_field": "date column of --station-table (TABLE_DATE_FIELD)",
    "table_value_field": "soil-moisture column of --station-table (TABLE_VALUE_FIELD)",
    "station_factors": "columns of --station-table as factor variables, 'factor=column[,column];...' "
                       "(STATION_FACTORS)",
    "drop_outside": "drop stations outside the grid (with a warning) instead of failing (DROP_OUTSIDE)",
    "reference": "raster whose grid everything is aligned to (REFERENCE; default: the first factor's)",
    "start": "date of the first band of layers whose files carry no dates, YYYY-MM-DD (START_DATE)",
    "step_days": "days between bands of undated layers (STEP_DAYS)",
    "patch_size": "odd k: the k x k pixel neighbourhood each expert sees (PATCH_SIZE)",
    "seq_len": "days of input per estimate (SEQ_LEN)",
    "resampling": "auto or a GDAL resampling name (RESAMPLING)",
    "strict": "implausible or non-finite values are an error instead of nodata with a warning (STRICT)",
    "output": "the output file or folder (OUTPUT)",
    "dataset": "dataset file from 'prepare' (DATASET)",
    "model_type": "model type (MODEL)",
    "log": "training log, JSON lines (LOG)",
    "model_file": "model file (.pt) from 'train' (MODEL_FILE)",
    "extent": "area to predict, 'xmin,ymin,xmax,ymax' in the CRS of the output grid (EXTENT)",
    "models": "model files (.pt) to score; repeat or list several (MODELS)",
    "references": "reference soil-moisture products: PATH or NAME=PATH, repeat for each (REFERENCES)",
    "baselines": "built-in baselines, comma-separated: persistence, climatology, or none (BASELINES)",
    "period": "dates scored, from the first model's split (PERIOD); --date-from/--date-to override it",
    "regions": "polygon vector file of regions (REGIONS)",
    "region_field": "field naming each region in --regions (REGION_FIELD)",
    "device": "auto, cpu, cuda or cuda:N (DEVICE)",
    "epochs": "EPOCHS", "batch_size": "BATCH_SIZE", "lr": "peak learning rate (LEARNING_RATE)",
    "seed": "random seed (SEED)", "samples_per_epoch": "random windows per epoch, 0 = all (SAMPLES_PER_EPOCH)",
    "patience": "early-stopping patience in epochs (PATIENCE)", "val_start": "validation start, YYYY-MM-DD "
    "(VAL_START)", "test_start": "test start, YYYY-MM-DD (TEST_START)", "amp": "bf16 autocast on CUDA (AMP)",
    "threads": "torch CPU threads, 0 = from the load (THREADS)", "members": "ensemble members (ENSEMBLE)",
    "tile_size": "pixels per tile side (TILE_SIZE)", "cog": "write Cloud Optimized GeoTIFFs (COG)",
    "resume": "continue from the resume checkpoint beside the model file (<model>.resume), or from PATH (RESUME, "
              "RESUME_FILE)",
    "init_model": "fine-tune this trained model on the dataset (INIT_MODEL)",
    "refit_normalisation": "re-fit the normalisation of --init-model to the new dataset (REFIT_NORMALISATION)",
    "date_from": "first output/scored date, YYYY-MM-DD (DATE_FROM)",
    "date_to": "last output/scored date, YYYY-MM-DD (DATE_TO)",
    "workers": "Dask workers: 0 = auto (a local cluster sized to the machine when the prediction is large enough), "
               "1 = serial, n = a local cluster of n processes (WORKERS)",
    "scheduler": "address of a running Dask scheduler, e.g. tcp://host:8786 (SCHEDULER)",
}


class BadInput(Exception):
    """Bad input: exit status 2 with this one-line message (it names the option or file)."""


# --------------------------------------------------------------------------- options
@dataclasses.dataclass
class Option:
    dest: str                    # the core's keyword (or the CLI's own input)
    kind: str                    # int | float | str | bool | list
    default: object = None
    to: str = "cli"              # where the value goes: cli (read here), call (the core function), cfg (TrainConfig),
    #                              model (model options)
    choices: tuple = None
    help: str = ""
    required: bool = False
    metavar: str = None

    @property
    def name(self) -> str:
        return PARAMETER_NAMES.get(self.dest, self.dest)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def flags(self):
        alias = "--" + self.dest.replace("_", "-")
        return [self.flag] + ([alias] if alias != self.flag else [])

    def keys(self):
        """The names a config file may use for it."""
        return {f[2:] for f in self.flags} | {f[2:].replace("-", "_") for f in self.flags}


def _kind(annotation, default):
    """int/float/str/bool for a plain setting, bool_or_str for Union[bool, str] (a flag that may take a value, e.g.
    --resume or --resume PATH), list for a list of strings, None for anything else."""
    t = annotation
    if typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if set(args) == {bool, str}:
            return "bool_or_str"
        t = args[0] if len(args) == 1 else None
    if t is inspect.Parameter.empty or t is None or isinstance(t, str):
        t = type(default) if default is not None else (str if t is not None else None)
    for py, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if t is py:
            return kind
    return None


def _hints(obj):
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: types from the defaults
        return {}


def options_from_dataclass(cls, to: str, only=None, skip=(), command: str = "") -> list:
    """One Option per plain field of a dataclass (int, float, str, bool, Optional of one of those); fields of
    other types (lists, objects) are left out."""
    hints, out = _hints(cls), []
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()                      # type: ignore[misc]
        else:
            continue                                           # required field: set from the data, not an option
        kind = _kind(hints.get(f.name, f.type), default)
        if kind is None or kind == "list":
            continue
        default = DEFAULT_OVERRIDES.get((command, f.name), default)
        out.append(Option(f.name, kind, default, to, help=HELP.get(f.name, f"{cls.__name__}.{f.name}")))
    return out


def options_from_signature(fn, to: str, skip=(), command: str = "") -> list:
    """One Option per keyword of `fn` with a plain default (int, float, str, bool, or None = text)."""
    hints, out = _hints(fn), []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.default is inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind = _kind(hints.get(p.name, p.annotation), p.default)
        if kind is None or kind == "list":
            continue
        default = DEFAULT_OVERRIDES.get((command, p.name), p.default)
        out.append(Option(p.name, kind, default, to, help=HELP.get(p.name, f"{fn.__name__}({p.name}=...)")))
    return out


def _choices(command: str) -> dict:
    """Choices from the option lists (ismoe_qgis/options.py, no torch)."""
    out = {"device": None}
    if command == "prepare":
        return out
    from .options import EVAL_PERIODS, GAP_POLICIES, MEMORIES, MIXTURES, MODEL_TYPES, ROUTER_INPUTS, SCHEDULES, SPLITS
    out.update(gap_policy=GAP_POLICIES, split=SPLITS, schedule=SCHEDULES, model_type=MODEL_TYPES,
               router_input=ROUTER_INPUTS, mixture=MIXTURES, memory=MEMORIES, period=EVAL_PERIODS)
    return out


def command_options(command: str) -> list:
    """The options of a command: its own inputs first, then what the core defines."""
    O = Option
    if command == "prepare":
        from .data.prepare import prepare_dataset
        own = [O("factor", "list", to="cli", required=True, metavar="[NAME=]PATH"), O("factor_groups", "str"),
               O("target", "str", metavar="PATH"), O("stations", "str", metavar="PATH"),
               O("stations_crs", "str", "EPSG:4326"), O("station_id_field", "str", "station_id"),
               O("station_table", "str", metavar="CSV"), O("table_id_field", "str", "station_id"),
               O("table_date_field", "str", "date"), O("table_value_field", "str", "sm"),
               O("station_factors", "str"), O("drop_outside", "bool", False),
               O("output", "str", required=True, metavar="PATH")]
        derived = options_from_signature(prepare_dataset, "call", SKIP[command], command)
    elif command == "train":
        from .model import train as core
        from .model.networks import ModelConfig
        own = [O("dataset", "str", required=True, metavar="PATH"), O("model_type", "str", "ismoe"),
               O("output", "str", required=True, metavar="PATH"), O("log", "str", metavar="PATH")]
        derived = (options_from_dataclass(ModelConfig, "model", MODEL_OPTIONS, command=command)
                   + options_from_dataclass(core.TrainConfig, "cfg", skip=SKIP[command], command=command)
                   + options_from_signature(core.train, "call", SKIP[command], command))
    elif command == "predict":
        from .model.predict import predict_layers
        own = [O("model_file", "str", required=True, metavar="PATH"),
               O("factor", "list", required=True, metavar="[NAME=]PATH"), O("reference", "str", metavar="PATH"),
               O("extent", "str", metavar="XMIN,YMIN,XMAX,YMAX"), O("output", "str", required=True, metavar="DIR")]
        derived = options_from_signature(predict_layers, "call", SKIP[command], command)
    elif command == "evaluate":
        from .model.evaluate import BASELINES, evaluate
        own = [O("models", "list", required=True, metavar="PATH"), O("dataset", "str", required=True, metavar="PATH"),
               O("references", "list", metavar="[NAME=]PATH"), O("baselines", "str", ",".join(BASELINES)),
               O("period", "str", "test"), O("date_from", "str"), O("date_to", "str"), O("regions", "str"),
               O("region_field", "str"), O("output", "str", required=True, metavar="DIR")]
        derived = options_from_signature(evaluate, "call", SKIP[command], command)
    else:
        raise BadInput(f"unknown command '{command}': choose one of {', '.join(COMMANDS)}")
    choices = _choices(command)
    seen, out = set(), []
    for o in own + derived:
        if o.dest in seen:
            continue
        seen.add(o.dest)
        if o.choices is None and choices.get(o.dest):
            o.choices = tuple(choices[o.dest])
        if not o.help:
            o.help = HELP.get(o.dest, "")
        out.append(o)
    return out


# --------------------------------------------------------------------------- parsing
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's usage block is in --help)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _typed(kind, flag):
    def conv(text):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'a whole number' if kind == 'int' else 'a number'}") \
                from None
    conv.__name__ = "whole number" if kind == "int" else "number"
    return conv


def build_parser(command: str):
    options = command_options(command)
    p = _Parser(prog=f"{PROG} {command}", description=ABOUT[command],
                epilog="Options may also come from --config FILE.toml (keys: the option names); the command line "
                       "wins. Exit status: 0 done, 2 bad input, 130 interrupted, 1 other error.")
    p.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file (top-level keys and a "
                                                         f"[{command}] table)")
    p.add_argument("--quiet", action="store_true", help="no progress or info lines on stderr (warnings still)")
    for o in options:
        default = "" if o.default in (None, "") else f" (default: {o.default})"
        req = " (required)" if o.required else ""
        help_text = (o.help + default + req).replace("%", "%%")
        kw = dict(dest=o.dest, default=None, help=help_text)
        if o.kind == "bool":
            p.add_argument(*o.flags, action=argparse.BooleanOptionalAction, **kw)
        elif o.kind == "bool_or_str":      # --resume (True) or --resume PATH
            p.add_argument(*o.flags, nargs="?", const=True, metavar=o.metavar or "PATH", **kw)
        elif o.kind == "list":
            p.add_argument(*o.flags, action="extend", nargs="+", metavar=o.metavar or o.name.upper(), **kw)
        else:
            typ = _typed(o.kind, o.flag) if o.kind in ("int", "float") else str
            p.add_argument(*o.flags, type=typ, choices=o.choices,
                          metavar=None if o.choices else (o.metavar or o.name.upper()), **kw)
    return p, options


def _load_toml(path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise BadInput("--config needs Python >= 3.11 (tomllib) or the tomli package") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise BadInput(f"--config: file not found: '{path}'") from None
    except IsADirectoryError:
        raise BadInput(f"--config: '{path}' is a folder, not a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"--config {path}: not valid TOML ({e})") from None


def _config_value(o: Option, value, key, path):
    import datetime as _dt
    where = f"--config {path}: '{key}'"
    if isinstance(value, (_dt.date, _dt.datetime)) and o.kind == "str":
        value = value.isoformat()[:10]
    if o.kind == "bool":
        if not isinstance(value, bool):
            raise BadInput(f"{where} must be true or false, got {value!r}")
    elif o.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInput(f"{where} must be a whole number, got {value!r}")
    elif o.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInput(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif o.kind == "str":
        if not isinstance(value, str):
            raise BadInput(f"{where} must be a text (in quotes), got {value!r}")
    elif o.kind == "bool_or_str":
        if not isinstance(value, (bool, str)):
            raise BadInput(f"{where} must be true, false or a path, got {value!r}")
    elif o.kind == "list":
        if isinstance(value, str):
            value = [value]
        elif isinstance(value, dict):           # [prepare.factor] snow_depth = "snow_depth.tif"
            value = [f"{k}={v}" for k, v in value.items()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInput(f"{where} must be a text or a list of texts, got {value!r}")
    if o.choices and value not in o.choices:
        raise BadInput(f"{where}: '{value}' is not one of {', '.join(map(str, o.choices))}")
    return value


def read_config(path, command: str, options) -> dict:
    """{dest: value} from a TOML file: top-level keys and the [command] table (which wins); anything
    unknown is an error naming it."""
    data = _load_toml(path)
    flat, table = {}, {}
    for key, value in data.items():
        if isinstance(value, dict) and key in COMMANDS:
            if key == command:
                table = value
            continue
        if isinstance(value, dict) and not any(key in o.keys() and o.kind == "list" for o in options):
            raise BadInput(f"--config {path}: unknown table [{key}]: the tables are {', '.join(COMMANDS)}")
        flat[key] = value
    by_key = {k: o for o in options for k in o.keys()}
    out = {}
    for key, value in {**flat, **table}.items():
        o = by_key.get(key)
        if o is None:
            if key in flat and key not in table and _other_command_knows(key, command):
                continue                    # a top-level key for another command of the chain (e.g. device)
            where = f"[{command}] table" if key in table else "top level"
            raise BadInput(f"--config {path}: unknown key '{key}' ({where}) for '{command}': the keys are the "
                           f"option names, e.g. {', '.join(sorted(o.flag[2:] for o in options)[:6])}, ... "
                           f"({PROG} {command} --help)")
        out[o.dest] = _config_value(o, value, key, path)
    return out


def _other_command_knows(key: str, command: str) -> bool:
    """Whether `key` is an option of another command (one whose core cannot be imported here is skipped)."""
    for other in COMMANDS:
        if other == command:
            continue
        try:
            opts = command_options(other)
        except ImportError:
            continue
        if any(key in o.keys() for o in opts):
            return True
    return False


def resolve(args, options, config: dict) -> dict:
    """Command line, else the config file, else the default; required options checked; dates checked."""
    values = {}
    for o in options:
        v = getattr(args, o.dest)
        if v is None:
            v = config.get(o.dest, o.default)
        if o.required and (v is None or v == []):
            raise BadInput(f"{o.flag} is required ({o.help.split(' (')[0]}): give it on the command line or as "
                           f"'{o.name}' in --config")
        if o.dest in DATE_OPTIONS and v not in (None, ""):
            v = _iso_date(v, o.flag)
        if v == "" and o.kind == "str" and o.default is None:
            v = None
        values[o.dest] = v
    return values


def _iso_date(text, flag):
    import numpy as np
    try:
        return str(np.datetime64(str(text).strip()[:10], "D"))
    except ValueError:
        raise BadInput(f"{flag}: '{text}' is not a date: use YYYY-MM-DD") from None


# --------------------------------------------------------------------------- inputs
safe_name = names.safe_name
_GDAL_STRING = names.GDAL_STRING
_SUBDATASET = names.SUBDATASET
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .-]*$")


def parse_layer(text: str, flag: str):
    """'[NAME=]SOURCE' -> (name, source); the name defaults to the file name (as a QGIS layer's), and for
    NETCDF:"f.nc":var to f_var. The file must exist."""
    text = text.strip()
    name, source = None, text
    head, sep, tail = text.partition("=")
    if sep and _NAME.match(head) and "/" not in head and not _GDAL_STRING.match(text):
        name, source = head.strip(), tail.strip()
    m = _SUBDATASET.match(source) if _GDAL_STRING.match(source) else None
    path = m.group("path") if m else (None if _GDAL_STRING.match(source) else source)
    if path is not None:
        if not os.path.exists(path):
            raise BadInput(f"{flag}: file not found: '{path}'")
        if os.path.isdir(path) and not path.lower().endswith(".zarr"):
            raise BadInput(f"{flag}: '{path}' is a folder, not a raster file")
    if name is None:
        name = (f"{os.path.splitext(os.path.basename(m.group('path')))[0]}_{m.group('var')}" if m
                else os.path.splitext(os.path.basename(source.rstrip("/")))[0])
    return safe_name(name), source


def parse_layers(texts, flag: str) -> dict:
    out = {}
    for t in texts or []:
        name, source = parse_layer(t, flag)
        if name in out:
            raise BadInput(f"{flag}: two layers are named '{name}': name one with NAME=PATH (layer names are the "
                           f"variable names the model remembers)")
        out[name] = source
    return out


def group_layers(layers: dict, groups_text: str) -> dict:
    """{variable: source} + FACTOR_GROUPS -> {factor: [(variable, source), ...]} (as ismoe:preparedataset)."""
    return names.group_layers(layers, groups_text, "--factor", "--factor-groups")


def check_file(path, flag: str):
    if not path:
        raise BadInput(f"{flag} is required")
    if not os.path.exists(path):
        raise BadInput(f"{flag}: file not found: '{path}'")
    return path


check_writable = names.check_writable


# --------------------------------------------------------------------------- progress, signals, ranks
def dist_rank():
    """(rank, world size) from torchrun's environment (0, 1 outside torchrun)."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


class Reporter:
    """Core callbacks that write to stderr: progress every 5 % (or every 10 s), log lines as they come, and
    cancel once a SIGINT/SIGTERM arrived."""

    def __init__(self, command, stream=None, quiet=False):
        self.command, self.stream, self.quiet = command, stream or sys.stderr, quiet
        self.rank, self.world = dist_rank()
        self.prefix = f"[rank {self.rank}] " if self.world > 1 else ""
        self.t0 = self.t_last = time.monotonic()
        self.last = -1
        self.signum = None
        self._old = {}

    def _write(self, text):
        try:
            print(self.prefix + text, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass

    def progress(self, fraction):
        if self.quiet or self.rank != 0:
            return
        try:
            pct = int(max(0.0, min(1.0, float(fraction))) * 100)
        except (TypeError, ValueError):
            return
        now = time.monotonic()
        if pct >= self.last + 5 or (pct > self.last and now - self.t_last >= 10) or (pct == 100 > self.last):
            self.last, self.t_last = pct, now
            self._write(f"{self.command}: {pct:3d}% ({now - self.t0:.0f} s)")

    def log(self, msg):
        msg = str(msg)
        important = msg.lower().startswith(("warning", "error"))
        if important or not (self.quiet or self.rank != 0):
            self._write(msg)

    def is_cancelled(self):
        return self.signum is not None

    def callbacks(self):
        from .core_callbacks import Callbacks
        return Callbacks(progress=self.progress, log=self.log, is_cancelled=self.is_cancelled)

    def _on_signal(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self._write(f"{self.command}: {signal.Signals(signum).name} received: stopping at the next batch or tile "
                    f"(send it again to stop at once)")

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._on_signal)
            except (ValueError, OSError):  # not the main thread
                pass

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _json_safe(obj.item())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _to(options, values, target):
    return {o.dest: values[o.dest] for o in options if o.to == target}


# --------------------------------------------------------------------------- commands
def run_prepare(v, options, cb):
    from .data.prepare import prepare_dataset
    layers = parse_layers(v["factor"], "--factor")
    factors = group_layers(layers, v["factor_groups"])
    out = v["output"]
    check_writable(out, "--output")
    target = v["target"]
    if target:
        parse_layer(target, "--target")
    stations = _stations(v, cb) if v["stations"] or v["station_table"] else None
    if stations is None and (v["station_factors"] or "").strip():
        raise BadInput("--station-factors: columns of a station table can be factors only with station targets "
                       "(--stations + --station-table); with a --target raster there is no station to measure them at")
    if not target and stations is None:
        raise BadInput("--target: give a soil-moisture raster series, or --stations with a --station-table")
    if target and stations is not None:
        raise BadInput("--target and --stations are both given: choose one target")
    kw = _to(options, v, "call")
    if kw.get("reference"):
        kw["reference"] = parse_layer(kw["reference"], "--reference")[1]
    cube = prepare_dataset(factors, target or None, stations=stations, callbacks=cb, **kw)
    cube.save(out)
    import numpy as np
    return {"output": os.path.abspath(out), "n_samples": int(np.isfinite(cube.y).sum()),
            "factors": {f: [n for n, _ in vs] for f, vs in factors.items()},
            "dates": [str(cube.dates[0]), str(cube.dates[-1])]}


def _stations(v, cb):
    from .data import stations as st
    if not v["stations"]:
        raise BadInput("--station-table was given without --stations (the station points)")
    if not v["station_table"]:
        raise BadInput("--station-table: stations were given but no observation table (station id, date, soil "
                       "moisture)")
    points_path = check_file(v["stations"], "--stations")
    table = check_file(v["station_table"], "--station-table")
    if points_path.lower().endswith((".csv", ".txt")):
        points = st.read_points_csv(points_path, v["station_id_field"])
        crs = v["stations_crs"]
    else:
        points, crs = st.read_points_vector(points_path, v["station_id_field"])
    tbl = st.read_station_table(table, v["table_id_field"], v["table_date_field"], v["table_value_field"],
                                name="--station-table", log=cb.log)
    columns = {}
    for fname, cols in names.parse_groups(v["station_factors"], "--station-factors", "column", merge=True).items():
        for col in cols:
            columns.setdefault(fname, {})[col] = st.read_station_table(
                table, v["table_id_field"], v["table_date_field"], col, name=f"--station-factors column '{col}'",
                on_duplicate="mean", log=cb.log)
    return {"points": points, "crs_wkt": crs, "table": tbl, "columns": columns, "drop_outside": v["drop_outside"],
            "points_name": "--stations", "table_name": "--station-table"}


def run_train(v, options, cb):
    from .data.cube import Cube, check_split
    from .model import train as core
    check_file(v["dataset"], "--dataset")
    out = v["output"]
    check_writable(out, "--output")
    if v["log"]:
        check_writable(v["log"], "--log")
    cfg = core.TrainConfig(**_to(options, v, "cfg"))
    model_options = _to(options, v, "model")
    if model_options.get("memory") != "stateful":
        model_options.pop("spin_up", None)          # a windowed model has no spin-up
    cube = Cube.load(v["dataset"])
    if getattr(cfg, "split", "time") == "time":
        check_split(cube, cfg.val_start, cfg.test_start, "--val-start", "--test-start")
    cb.log(f"training {v['model_type']} on {v['dataset']}")
    res = core.train(cube, out, v["model_type"], cfg, model_options, cb, v["log"], **_to(options, v, "call"))
    keep = ("best_epoch", "cancelled", "device", "val_cc", "val_rmse", "test_cc", "test_rmse",
            "test_cc_location_median", "history")
    return {"output": os.path.abspath(out), "log": v["log"], **{k: res.get(k) for k in keep if k in res}}


def _extent(text):
    try:
        parts = [float(p) for p in str(text).replace(" ", ",").split(",") if p]
    except ValueError:
        parts = []
    if len(parts) != 4 or not (parts[0] < parts[2] and parts[1] < parts[3]):
        raise BadInput(f"--extent: '{text}' is not 'xmin,ymin,xmax,ymax' with xmin < xmax and ymin < ymax")
    return tuple(parts)


def run_predict(v, options, cb):
    from .model.predict import predict_layers
    model = check_file(v["model_file"], "--model-file")
    layers = parse_layers(v["factor"], "--factor")
    if not layers:
        raise BadInput("--factor: no factor layers given: add one raster per model variable")
    out = v["output"]
    check_writable(os.path.join(out, "x"), "--output")
    grid = None
    if v["reference"]:
        from .data.rasters import Grid
        grid = Grid.from_raster(parse_layer(v["reference"], "--reference")[1])
    extent = _extent(v["extent"]) if v["extent"] else None
    man = predict_layers(model, layers, out, extent=extent, grid=grid, callbacks=cb, **_to(options, v, "call"))
    return {"output": os.path.abspath(out), "sm": os.path.join(os.path.abspath(out), man["sm"]),
            "n_dates": len(man["dates"]), "dates": [man["dates"][0], man["dates"][-1]] if man["dates"] else [],
            "weights": man["weights"]}


def _region_labels(path, field, cube, cb):
    from osgeo import ogr, osr
    from .model.evaluate import region_labels_from_polygons
    check_file(path, "--regions")
    ds = ogr.Open(path)
    if ds is None or ds.GetLayerCount() == 0:
        raise BadInput(f"--regions: cannot open '{path}' as a vector layer")
    lyr = ds.GetLayer(0)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    if field and field not in names:
        raise BadInput(f"--region-field: no field '{field}' in {path} (fields: {', '.join(names)})")
    dst = osr.SpatialReference()
    if dst.ImportFromWkt(cube.grid["crs_wkt"]) != 0:
        raise BadInput("--dataset: the dataset has no valid CRS; cannot place --regions")
    src = lyr.GetSpatialRef()
    for s in (dst, src):
        if s is not None and hasattr(s, "SetAxisMappingStrategy"):
            s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    xform = osr.CoordinateTransformation(src, dst) if src is not None and not src.IsSame(dst) else None
    polygons = []
    for feat in lyr:
        label = feat.GetField(field) if field else None
        name = str(label) if label not in (None, "") else f"feature {feat.GetFID()}"
        geom = feat.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            cb.log(f"warning: --regions: {name} has no geometry; skipped")
            continue
        geom = geom.Clone()
        if xform is not None:
            geom.Transform(xform)
        polygons.append((name, json.loads(geom.ExportToJson())))
    labels = region_labels_from_polygons(cube, polygons)
    if not any(lab is not None for lab in labels):
        raise BadInput(f"--regions: no target location of the dataset lies inside a polygon of '{path}' (after "
                       f"reprojection to the dataset CRS): check the layer and its CRS")
    return labels


def run_evaluate(v, options, cb):
    from .data.cube import Cube
    from .model.evaluate import BASELINES, evaluate, model_names
    files = [check_file(f, "--models") for f in v["models"]]
    check_file(v["dataset"], "--dataset")
    out = v["output"]
    check_writable(os.path.join(out, "x"), "--output")
    refs = parse_layers(v["references"], "--references")
    text = (v["baselines"] or "").strip().lower()
    baselines = [] if text in ("", "none") else [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise BadInput(f"--baselines: '{bad[0]}' is not one of {', '.join(BASELINES)} (or none)")
    if v["date_from"] and v["date_to"] and v["date_from"] > v["date_to"]:
        raise BadInput(f"--date-from: {v['date_from']} is after --date-to {v['date_to']}")
    period = (v["date_from"], v["date_to"]) if (v["date_from"] or v["date_to"]) else v["period"]
    cube = Cube.load(v["dataset"])
    labels = _region_labels(v["regions"], v["region_field"], cube, cb) if v["regions"] else None
    res = evaluate(cube, model_names(files), refs, period, labels, out, cb, baselines=baselines,
                   **_to(options, v, "call"))
    overall = [{k: r.get(k) for k in ("model", "cc", "rmse", "ubrmse", "bias", "kge", "n")}
               for r in res["rows"] if r["group_kind"] == "overall"]
    return {"output": os.path.abspath(out), "n_samples": res["n_samples"], "paths": res["paths"], "overall": overall}


RUNNERS = {"prepare": run_prepare, "train": run_train, "predict": run_predict, "evaluate": run_evaluate}


def _top_help():
    lines = [f"usage: {PROG} {{{','.join(COMMANDS)}}} [--config FILE.toml] [options]", "",
             "ISMoE soil moisture without QGIS: the core of the Processing algorithms, for scripts and cluster jobs.",
             "", "commands:"]
    lines += [f"  {c:<9} {ABOUT[c]}" for c in COMMANDS]
    lines += ["", f"'{PROG} COMMAND --help' lists a command's options.",
              "Multi-GPU / multi-node training: torchrun --nproc_per_node=N -m ismoe_qgis train ...",
              "Exit status: 0 done, 2 bad input, 130 interrupted (SIGINT), 1 other error."]
    return "\n".join(lines)


def _one_line(exc) -> str:
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join((msg or type(exc).__name__).split())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from .threads import passive_openmp_wait
    passive_openmp_wait()          # before torch is imported: waiting OpenMP threads sleep instead of spinning
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help(), file=sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_BAD_INPUT
    if argv[0] == "--version":
        from .version import __version__
        print(__version__)
        return EXIT_OK
    command = argv[0]
    if command not in COMMANDS:
        print(f"{PROG}: error: unknown command '{command}': choose one of {', '.join(COMMANDS)} (see --help)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    reporter = Reporter(command)
    try:
        parser, options = build_parser(command)
        args = parser.parse_args(argv[1:])
        reporter.quiet = args.quiet
        config = read_config(args.config, command, options) if args.config else {}
        values = resolve(args, options, config)
        reporter.install()
        try:
            result = RUNNERS[command](values, options, reporter.callbacks())
        finally:
            reporter.restore()
    except SystemExit as e:            # argparse: --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except BaseException as exc:       # noqa: BLE001 - every failure becomes an exit status
        from .core_callbacks import Cancelled
        if isinstance(exc, Cancelled) or reporter.signum is not None:
            print(f"{PROG} {command}: interrupted ({_one_line(exc)})", file=sys.stderr)
            return 128 + (reporter.signum or signal.SIGINT)
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "torch":
            from .deps import torch_missing_message
            print(f"{PROG} {command}: error: {_one_line(torch_missing_message(exc))}", file=sys.stderr)
            return EXIT_FAILED
        if isinstance(exc, (BadInput, ValueError, KeyError, FileNotFoundError, IsADirectoryError,
                            NotADirectoryError, PermissionError)):
            print(f"{reporter.prefix}{PROG} {command}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        import traceback
        traceback.print_exc()
        print(f"{reporter.prefix}{PROG} {command}: failed: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    if reporter.signum is not None:    # the core stopped early and returned (train keeps its best model)
        print(f"{PROG} {command}: interrupted ({signal.Signals(reporter.signum).name}); "
              + ("the best model so far is in " + str(result.get("output")) if command == "train" else "stopped"),
              file=sys.stderr)
        return 128 + reporter.signum
    if reporter.rank == 0:
        print(json.dumps(_json_safe(result), indent=1))
    return EXIT_OK

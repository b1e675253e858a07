"""Model file I/O: a torch file holding only tensors and a JSON string, never pickled objects.

Loaded with ``torch.load(path, weights_only=True)``, so opening a model file cannot run code; then
validated (header, tensor names and shapes against the model the header's config builds) before the
weights are loaded: every problem is a ModelFileError naming the file and, where it applies, the parameter.
"""
import json
import os

import torch

from ..fileutil import atomic_output
from .networks import ModelConfig, SoilMoistureNet

FORMAT = "ismoe-model/1"             # windowed models (every file before MEMORY)
FORMAT_STATEFUL = "ismoe-model/2"    # stateful models: a reader that only knows windows must refuse them
FORMATS = (FORMAT, FORMAT_STATEFUL)


def save_model(path, model: SoilMoistureNet, info: dict = None, state: dict = None):
    """Write the model (config + weights + optional training info) atomically. The header names the memory
    mode and spin-up; a stateful model gets format ismoe-model/2, which plugin versions that only know
    windowed models refuse by name instead of running it as a windowed model. state: weights to write
    instead of the model's own (e.g. an ensemble's per-member best checkpoint)."""
    cfg = model.cfg
    header = {"format": FORMAT_STATEFUL if cfg.stateful else FORMAT, "config": cfg.to_dict(), "info": info or {},
              "memory": {"mode": cfg.memory, "spin_up": cfg.spin_up if cfg.stateful else None,
                         "seq_len": cfg.seq_len}}
    state = {k: v.detach().cpu().contiguous() for k, v in (state or model.state_dict()).items()}
    with atomic_output(path, ".pt") as tmp:
        torch.save({"header": json.dumps(header), "state_dict": state}, tmp)


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong with it."""


def _not_ours(path, reason):
    return ModelFileError(f"{path} is not a model file of this plugin (not an ismoe model file: {reason}); "
                          f"train one with 'ismoe:train', and do not load files you do not trust any other way")


def _load_reason(path, e: Exception) -> str:
    """Why torch.load (weights_only=True) refused a file, in our words: torch's own message is not repeated
    (it suggests weights_only=False, which would run whatever code a crafted file holds)."""
    try:
        with open(str(path), "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    low = str(e).lower()
    refused = "unsupported global" in low or "unsupported operand" in low or "weights_only" in low and \
        "global" in low
    if head.startswith(b"PK\x03\x04"):                   # a torch (zip) file
        if refused:
            return ("it holds Python objects other than tensors (a pickle with classes or code); it was refused "
                    "unread, nothing in it was run")
        return "the file is truncated or damaged"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):   # a bare pickle
        if refused:
            return ("it is a pickle of Python objects other than tensors; it was refused unread, nothing in it "
                    "was run")
        return "it is a plain pickle, not a torch file"
    if not head:
        return "the file is empty"
    return "its bytes are neither a torch file nor a pickle"


def read_header(path) -> dict:
    """Read and validate a model file's header and weights: (header dict, state_dict of tensors)."""
    if not os.path.exists(str(path)):
        raise FileNotFoundError(f"model file not found: {path}")
    if os.path.isdir(str(path)):
        raise ModelFileError(f"{path} is a folder, not a model file: give the .pt file written by 'ismoe:train'")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever a foreign or damaged file makes torch raise
        raise _not_ours(path, _load_reason(path, e)) from None
    if not isinstance(blob, dict) or "header" not in blob or "state_dict" not in blob:
        raise _not_ours(path, "it is a torch file without the plugin's header and weights")
    try:
        header = json.loads(blob["header"])
    except (TypeError, ValueError):
        raise _not_ours(path, "its header is not JSON") from None
    state = blob["state_dict"]
    if not isinstance(header, dict) or not isinstance(header.get("config"), dict):
        raise _not_ours(path, "its header has no model configuration")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise _not_ours(path, "its weights are not a mapping of names to tensors")
    if header.get("format") not in FORMATS:
        raise ValueError(f"{path} has model format {header.get('format')!r}; this plugin version reads "
                         f"{' and '.join(FORMATS)} (windowed and stateful models): update the plugin")
    if header.get("format") == FORMAT and (header.get("config") or {}).get("memory", "window") != "window":
        raise ValueError(f"{path} says format {FORMAT!r} (windowed models) but holds a "
                         f"MEMORY={header['config']['memory']!r} model: the file is inconsistent; train it again")
    return header, state


def _shape(t) -> str:
    return "(" + ", ".join(str(int(n)) for n in t) + ")"


def check_state(path, model: SoilMoistureNet, state: dict):
    """Compare the file's tensors with the model its header's config builds, before load_state_dict:
    every parameter present, none extra, each of the expected shape and finite. Raises ModelFileError
    naming the file and the parameter (instead of torch's 'size mismatch' / 'Missing key(s)')."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    fix = "the file is damaged or was edited; train the model again"
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks parameter(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if extra:
            parts.append(f"has parameter(s) {', '.join(extra[:5])} that its configuration does not use"
                         + (" ..." if len(extra) > 5 else ""))
        raise ModelFileError(f"model file {path} {' and '.join(parts)}: {fix}")
    for k, t in want.items():
        got = state[k]
        if tuple(got.shape) != tuple(t.shape):
            raise ModelFileError(f"model file {path}: parameter '{k}' has shape {_shape(got.shape)} but the "
                                 f"configuration in its header needs {_shape(t.shape)}: {fix}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ModelFileError(f"model file {path}: parameter '{k}' holds NaN or inf values: {fix}")


def load_model(path, device="cpu"):
    """Return (model in eval mode on `device`, ModelConfig, info dict). The file is validated first
    (read_header, check_state): a file that is not ours or does not match its own header is a
    ModelFileError naming the file (and the parameter), never a torch traceback."""
    header, state = read_header(path)
    try:
        cfg = ModelConfig.from_dict(header["config"])
        model = SoilMoistureNet(cfg)
    except Exception as e:  # noqa: BLE001 - a header config this version cannot build
        raise ModelFileError(f"model file {path}: the model configuration in its header cannot be built "
                             f"({type(e).__name__}: {str(e)[:200]}): train the model again") from None
    check_state(path, model, state)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, cfg, header.get("info", {})


# ---------------------------------------------------------------- resume checkpoints (issue 15 item 6)
# ``train`` writes one every epoch beside the model file (<model>.resume): a torch file of tensors, nested
# dicts/lists of numbers and a JSON header (loaded with weights_only=True, like model files): the model, the
# per-member best weights, the optimizer and schedule, the torch and numpy RNG states, the epoch, the
# best-so-far and the early-stopping counters, and fingerprints of the dataset and the configuration.
RESUME_FORMAT = "ismoe-resume/1"
RESUME_SUFFIX = ".resume"


class CheckpointError(ValueError):
    """A resume checkpoint that cannot be used; the message names the file and what differs or is wrong."""


def resume_path(out_path) -> str:
    """The resume checkpoint of the model file `out_path`: `<out_path>.resume` (not a *.pt name, so that
    it is never taken for a model)."""
    return str(out_path) + RESUME_SUFFIX


def save_checkpoint(path, header: dict, tensors: dict):
    """Write a resume checkpoint atomically: `header` (JSON-able) and `tensors` (state dicts, RNG states)."""
    blob = {"header": json.dumps({"format": RESUME_FORMAT, **header}), **tensors}
    with atomic_output(path, RESUME_SUFFIX) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path):
    """Read a resume checkpoint: (header dict, blob). A missing, damaged or foreign file is a CheckpointError
    (FileNotFoundError when missing) naming the file."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        header = json.loads(blob["header"])
    except Exception as e:  # noqa: BLE001 - whatever a foreign or damaged file makes torch raise
        raise CheckpointError(f"{path} is not a resume checkpoint of this plugin ({_load_reason(path, e)}); "
                              f"start without RESUME") from None
    if not isinstance(header, dict) or header.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {header.get('format') if isinstance(header, dict) else None!r}, "
                              f"this plugin version resumes {RESUME_FORMAT}: start without RESUME")
    return header, blob


def _digest(*arrays) -> str:
    import hashlib
    import numpy as np
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def dataset_fingerprint(cube) -> dict:
    """What identifies a dataset cube for a resumed or distributed run, item by item (so a difference can be
    named): variables, factors, shape, dates, grid, target locations, normalisation statistics (means over
    the whole cube: they change with its content) and a digest of the targets (up to ~4 M values, strided)."""
    import numpy as np
    y = np.asarray(cube.y)
    step = max(1, y.size // (1 << 22))
    return {
        "variables": list(cube.variables), "factors": {f: list(v) for f, v in cube.factors.items()},
        "shape": [int(n) for n in cube.x.shape], "patch_size": int(cube.patch_size), "seq_len": int(cube.seq_len),
        "dates": [str(cube.dates[0]), str(cube.dates[-1]), int(len(cube.dates))],
        "grid": {"transform": [float(v) for v in cube.grid.get("transform", [])],
                 "width": cube.grid.get("width"), "height": cube.grid.get("height"),
                 "crs": _digest(np.frombuffer(str(cube.grid.get("crs_wkt", "")).encode(), np.uint8))},
        "targets": _digest(np.asarray(cube.target_rows, np.int64), np.asarray(cube.target_cols, np.int64)),
        "stations": list(cube.station_ids) if cube.station_ids else None,
        "x_stats": [round(float(v), 6) for v in list(cube.x_mean) + list(cube.x_std)],
        "y_stats": [round(float(cube.y_mean), 6), round(float(cube.y_std), 6)],
        "y": _digest(y.reshape(-1)[::step]),
    }


def fingerprint_differences(saved: dict, now: dict, names: dict = None) -> list:
    """The items of two fingerprints that differ, as 'NAME: <saved> there, <now> here' strings (long values
    shortened); names maps an item to the parameter the user knows it by."""
    def short(v):
        s = json.dumps(v, default=str)
        return s if len(s) <= 60 else s[:57] + "..."
    names = names or {}
    out = []
    for k in list(saved) + [k for k in now if k not in saved]:
        a, b = saved.get(k, "<absent>"), now.get(k, "<absent>")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{names.get(k, k)}: {short(a)} there, {short(b)} here")
    return out

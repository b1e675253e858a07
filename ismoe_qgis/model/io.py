"""Model file I/O: a torch file holding only tensors and a JSON string, never pickled objects.

Loaded with ``torch.load(path, weights_only=True)``, so opening a model file cannot run code.
"""
import json
import os

import torch

from ..fileutil import atomic_output
from .networks import ModelConfig, SoilMoistureNet

FORMAT = "ismoe-model/1"             # windowed models (every file before MEMORY)
FORMAT_STATEFUL = "ismoe-model/2"    # stateful models: a reader that only knows windows must refuse them
FORMATS = (FORMAT, FORMAT_STATEFUL)


def save_model(path, model: SoilMoistureNet, info: dict = None):
    """Write the model (config + weights + optional training info) atomically. The header names the memory
    mode and spin-up; a stateful model gets format ismoe-model/2, which plugin versions that only know
    windowed models refuse by name instead of running it as a windowed model."""
    cfg = model.cfg
    header = {"format": FORMAT_STATEFUL if cfg.stateful else FORMAT, "config": cfg.to_dict(), "info": info or {},
              "memory": {"mode": cfg.memory, "spin_up": cfg.spin_up if cfg.stateful else None,
                         "seq_len": cfg.seq_len}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path, ".pt") as tmp:
        torch.save({"header": json.dumps(header), "state_dict": state}, tmp)


def read_header(path) -> dict:
    if not os.path.exists(str(path)):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
        header = json.loads(blob["header"])
    except Exception as e:  # a file that is not ours, or corrupt
        raise ValueError(f"{path} is not an ismoe model file ({e}); train one with 'ismoe:train'")
    if header.get("format") not in FORMATS:
        raise ValueError(f"{path} has model format {header.get('format')!r}; this plugin version reads "
                         f"{' and '.join(FORMATS)} (windowed and stateful models): update the plugin")
    if header.get("format") == FORMAT and (header.get("config") or {}).get("memory", "window") != "window":
        raise ValueError(f"{path} says format {FORMAT!r} (windowed models) but holds a "
                         f"MEMORY={header['config']['memory']!r} model: the file is inconsistent; train it again")
    return header, blob["state_dict"]


def load_model(path, device="cpu"):
    """Return (model in eval mode on `device`, ModelConfig, info dict)."""
    header, state = read_header(path)
    cfg = ModelConfig.from_dict(header["config"])
    model = SoilMoistureNet(cfg)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, cfg, header.get("info", {})

"""Model file I/O: a torch file holding only tensors and a JSON string, never pickled objects.

Loaded with ``torch.load(path, weights_only=True)``, so opening a model file cannot run code.
"""
import json
import os

import torch

from ..fileutil import atomic_output
from .networks import ModelConfig, SoilMoistureNet

FORMAT = "ismoe-model/1"


def save_model(path, model: SoilMoistureNet, info: dict = None):
    """Write the model (config + weights + optional training info) atomically."""
    header = {"format": FORMAT, "config": model.cfg.to_dict(), "info": info or {}}
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
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} has model format {header.get('format')!r}, expected {FORMAT!r}")
    return header, blob["state_dict"]


def load_model(path, device="cpu"):
    """Return (model in eval mode on `device`, ModelConfig, info dict)."""
    header, state = read_header(path)
    cfg = ModelConfig.from_dict(header["config"])
    model = SoilMoistureNet(cfg)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, cfg, header.get("info", {})

"""Where training, evaluation and prediction run: the torch device and bf16 autocast (AMP).

``resolve_device`` never fails for lack of a GPU (CUDA asked for but absent: the CPU, with a message);
``autocast_dtype`` is bf16 on CUDA devices that support it; ``autocast_cc_check`` measures what autocast
changes in a model's validation CC (issue 6). Pure torch; no qgis import.
"""
import torch

from .metrics import cc_rmse

AMP_CC_TOL = 0.01   # largest change of validation CC that autocast may cause (issue 6)


def resolve_device(name: str, log=print) -> torch.device:
    name = (name or "auto").lower()
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"DEVICE must be auto, cpu or cuda, got '{name}'")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    if name != "auto":
        log(f"DEVICE '{name}' asked for, but no CUDA device is available to torch: using the CPU")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, amp: bool):
    """bf16 autocast on CUDA devices that support it, otherwise none."""
    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast_cc_check(obs, est_amp, est_fp32, amp_dtype, tol: float = None) -> dict:
    """The change of CC that autocast causes, from the same samples' estimates with and without it.
    ok: |CC(autocast) - CC(fp32)| <= tol (default AMP_CC_TOL). A model that fails is predicted in
    fp32 (``predict.predict_layers`` reads ``amp_ok`` from the model file)."""
    tol = AMP_CC_TOL if tol is None else tol
    cc_amp, _ = cc_rmse(obs, est_amp)
    cc_fp32, _ = cc_rmse(obs, est_fp32)
    delta = cc_amp - cc_fp32
    return {"dtype": str(amp_dtype).replace("torch.", ""), "val_cc_amp": cc_amp, "val_cc_fp32": cc_fp32,
            "delta": delta, "tol": tol, "ok": bool(abs(delta) <= tol)}

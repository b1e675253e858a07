"""Training: windows cut on the fly from the dataset cube, early stopping, best checkpoint kept.

Loss = MSE(mixture, target)
     + expert_loss  * mean_e MSE(expert_e, target)   (convex mixture only: each expert must explain SM
                                                      from its factor alone, so the router compares
                                                      honest experts; the scaled and additive forms'
                                                      experts output contributions, not SM)
     + router_entropy * mean entropy of the routing weights (optional, 0 = off; > 0 favours
                                                      decisive weights, < 0 favours spread)
all on valid (finite) targets only, in normalised target units.
"""
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import torch

from ..core_callbacks import Callbacks, Cancelled, ensure
from ..data.cube import Cube, split_masks
from ..fileutil import probe_write
from ..options import SCHEDULES
from ..version import __version__
from .io import (CheckpointError, dataset_fingerprint, fingerprint_differences, load_checkpoint, resume_path,
                 save_checkpoint, save_model)
from .device import AMP_CC_TOL, autocast_cc_check, autocast_dtype, resolve_device
from .metrics import cc_rmse
from .networks import ModelConfig, build_model, copy_members
from .sample_inference import predict_samples, set_contribution_reference
from .sampler import WindowSampler, draw_runs, select_samples


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 1e-4
    seed: int = 42
    device: str = "auto"
    samples_per_epoch: int = 20000
    val_samples: int = 4000
    patience: int = 6
    expert_loss: float = 0.5
    router_entropy: float = 0.0
    # > 0 (scaled mixture with runs of consecutive days): penalises the day-to-day change of the gates E * w_e
    # within a run, so that a gate follows where and when (slowly), not the day's weather of other factors
    gate_smoothness: float = 0.0
    # > 0 (additive, gated): a sparsity prior, this times the mean absolute departure of each contribution from
    # its batch mean, summed over factors: a factor that adds nothing the others do not is pushed to contribute 0
    contribution_l1: float = 0.0
    gap_policy: str = "skip"
    val_start: Optional[str] = None
    test_start: Optional[str] = None
    amp: bool = True
    compile: bool = False
    # > 1: each batch row is a run of this many consecutive target days at one location. Their
    # windows overlap, so the convolution runs once per day for all
    # of them (1.4x the samples/s at 4 days, SEQ_LEN 14, batch 256 on a 2-core CPU), but
    # neighbouring days carry little new information: on the demo region, 5 epochs x 4096
    # windows gave test CC 0.941 (1 day), 0.938 (2), 0.931 (4), means over 3 seeds; at equal
    # training time, equal CC. batch_size still counts windows. Default 1: every window drawn
    # on its own.
    consecutive_days: int = 1
    # learning-rate schedule: "onecycle" (warm-up to lr over 15 % of the steps, then cosine decay) or
    # "constant" (lr throughout, as a plain Adam reference trains)
    schedule: str = "onecycle"
    # MEMORY=stateful: each training sequence is SPIN_UP + supervised_days days at one location, the loss on
    # its last supervised_days outputs (sequence-to-sequence: one LSTM pass supervises N days); batch_size
    # counts supervised days (so batch_size // supervised_days sequences per batch)
    supervised_days: int = 32
    # torch CPU threads: 0 = the CPUs the load average leaves idle (at least 1), see ismoe_qgis/threads.py
    threads: int = 0
    # issue 15 item 2 (CUBE_IN_MEMORY): the window sampler: "auto" = in memory when its copies of the cube fit in
    # the memory available, chunk-wise otherwise (data/chunked.py); "memory" or "chunked" force one
    cube_in_memory: str = "auto"
    # held-out locations (model/folds.py): "time" (the time split only), "locations" (K folds of locations) or
    # "blocks" (K folds of block_size x block_size pixel blocks, training kept `buffer` pixels away from
    # held-out ones; 0 = automatic: block 4 x PATCH_SIZE (>= 8), buffer PATCH_SIZE). fold_labels: the user's
    # fold per location (e.g. a station field), instead of random folds.
    # ENSEMBLE > 1: each member weighs every training window by its own Poisson(1) draw (an online bootstrap:
    # the members see different resamples of the data within the same stacked batches); 0 = off
    bootstrap: bool = True
    split: str = "time"
    folds: int = 5
    block_size: int = 0
    buffer: int = -1
    fold_labels: Optional[list] = None
    # resume (issue 15 item 6): True = continue from the checkpoint beside the model file (<model>.resume,
    # written every epoch; started afresh when there is none), a path = that checkpoint; False = start afresh.
    # init_model: a trained model file to fine-tune (same factors and variables); its normalisation is kept
    # unless refit_normalisation (then the new dataset's statistics replace it).
    resume: Union[bool, str] = False
    init_model: Optional[str] = None
    refit_normalisation: bool = False


# TrainConfig fields that may change between a run and its resumption (where it runs, not what it computes)
RESUME_FREE = ("device", "threads", "compile", "resume")
PARAMETER_NAMES = {"lr": "LEARNING_RATE", "schedule": "LR_SCHEDULE", "members": "ENSEMBLE", "model_type": "MODEL",
                   "fold_labels": "FOLD_FIELD", "init_model": "INIT_MODEL", "x_stats": "normalisation statistics",
                   "y_stats": "target statistics", "y": "target values", "shape": "cube shape (V, T, H, W)",
                   "targets": "target locations", "memory": "MEMORY", "mixture": "MIXTURE"}


MAX_LOCATION_WARNINGS = 20   # locations named one by one; the rest are counted


def report_location_samples(cube: Cube, masks: dict, gap_policy: str, cb: Callbacks,
                            sample_masks: dict = None) -> dict:
    """Count the valid samples of every location per period, log them, and warn (a 'warning:' line,
    a QGIS warning in Processing) for each location that has no training sample, naming the layer that
    has no data there. masks: {period: (T,) bool}; sample_masks: their ``Cube.sample_mask`` when the
    caller has them already (train() does). Returns {"locations", "train", "val", "test" (lists),
    "no_train" (count)} for station cubes, the summary only for grids (too many locations to list)."""
    counts = ({k: m.sum(axis=0).astype(np.int64) for k, m in sample_masks.items()} if sample_masks is not None
              else cube.location_sample_counts(masks, gap_policy))
    labels = cube.location_labels()
    kind = "station" if cube.station_ids else "location"
    none = np.nonzero(counts["train"] == 0)[0]
    for n in none[:MAX_LOCATION_WARNINGS]:
        cb.log(f"warning: {kind} {labels[n]} has no training sample ({cube.why_no_samples(n, masks['train'])}); "
               f"validation {int(counts['val'][n])}, test {int(counts['test'][n])} samples: the model never "
               f"sees it in training")
    if len(none) > MAX_LOCATION_WARNINGS:
        cb.log(f"warning: {len(none) - MAX_LOCATION_WARNINGS} more {kind}s have no training sample")
    out = {"no_train": int(len(none)), "n_locations": int(len(labels))}
    if cube.station_ids:
        cb.log("samples per station (train/validation/test): " + ", ".join(
            f"{labels[n]} {int(counts['train'][n])}/{int(counts['val'][n])}/{int(counts['test'][n])}"
            for n in range(len(labels))))
        out.update(locations=labels, **{k: v.tolist() for k, v in counts.items()})
    return out


def model_config_for(cube: Cube, model_type="ismoe", **overrides) -> ModelConfig:
    return ModelConfig(factors=cube.factors, variables=cube.variables, model_type=model_type,
                       patch_size=cube.patch_size, seq_len=cube.seq_len, x_mean=cube.x_mean,
                       x_std=cube.x_std, y_mean=cube.y_mean, y_std=cube.y_std, version=__version__,
                       **overrides)


def loss_terms(model, x, y, doy, cfg: TrainConfig, valid=None, member_mask=None, forward=None, denom=None,
               run_days=1):
    """The training loss over the windows of x (see module doc). valid (bool, one per window):
    the windows that count (runs of consecutive days may hold days without a valid sample;
    their targets may be NaN). Default: all. An ensemble's loss is the mean of its members' losses: the
    members share no weight, so each gets exactly its own gradient. member_mask (B, N) bool: the windows
    each member may train on (cross-validation folds: not its held-out locations). Returns (loss,
    ensemble-mean estimate). forward: the module to run instead of model.forward_members (DDP's wrapper);
    denom: the denominators of the whole (global) batch instead of this batch's own, a number (the valid
    windows) without member_mask, (N,) with it (each member's summed weights): a rank's share of a global
    batch (model/distributed.py)."""
    pred, w, experts = (forward or model.forward_members)(x, doy)            # (B, N), (B, N, E), (B, N, E)
    pred, experts = pred.float(), experts.float()
    N = pred.shape[1]
    if valid is None:
        wn = torch.full_like(y, 1.0 / (y.numel() if denom is None or member_mask is not None else float(denom)))
    else:
        y = torch.where(valid, y, torch.zeros_like(y))
        wn = valid.float() / (valid.sum().clamp_min(1) if denom is None or member_mask is not None
                              else max(float(denom), 1.0))
    if member_mask is None:
        wn = wn[:, None] / N                                    # and the mean over members
    else:                                  # bool (allowed) or float (a bootstrap's weights), (B, N)
        keep = member_mask.float() * (wn[:, None] > 0).float()
        tot = keep.sum(0, keepdim=True) if denom is None else torch.as_tensor(denom, device=keep.device).view(1, -1)
        wn = keep / tot.clamp_min(1) / N     # each member over its own windows
    loss = (wn * (pred - y[:, None]) ** 2).sum()
    if cfg.expert_loss and model.cfg.model_type != "cnn_lstm" and model.mixture == "convex":
        loss = loss + cfg.expert_loss * (wn[..., None] * (experts - y[:, None, None]) ** 2).sum() / experts.shape[2]
    if cfg.router_entropy and model.router is not None:
        ent = -(w * torch.log(w.clamp_min(1e-8))).sum(dim=2)
        loss = loss + cfg.router_entropy * (wn * ent).sum()
    if cfg.contribution_l1 and model.mixture in ("additive", "gated"):
        dev = experts - (wn[..., None] * experts).sum(0, keepdim=True) / wn.sum(0).clamp_min(1e-12)[..., None]
        loss = loss + cfg.contribution_l1 * (wn[..., None] * dev.abs()).sum()
    if cfg.gate_smoothness and model.router is not None and run_days > 1:
        gates = model.train_gates if model.mixture == "gated" else w * w.shape[2]
        g = gates.float().view(run_days, -1, *w.shape[1:])                     # rows j * G + g
        loss = loss + cfg.gate_smoothness * ((g[1:] - g[:-1]) ** 2).mean()
    return loss, pred.mean(1)


def setup_folds(cube: Cube, cfg: TrainConfig, options: dict, cb) -> dict:
    """Folds of SPLIT=locations|blocks: {"split", "folds", "fold_of" (list per location), "locations"
    (labels), "block_size", "buffer", "excluded" (K, N) bool: the locations fold k may not train on}."""
    from .folds import assign_folds, training_exclusion
    if int(options.get("members", 1)) > 1:
        raise ValueError(f"SPLIT={cfg.split} trains one model per fold (FOLDS={cfg.folds}) in the places of "
                         f"ensemble members: use ENSEMBLE=1 with it")
    k = cube.patch_size
    block = cfg.block_size or max(8, 4 * k)
    buffer = k if cfg.buffer is None or cfg.buffer < 0 else int(cfg.buffer)
    labels = cube.location_labels()
    fold_of = assign_folds(cube.target_rows, cube.target_cols, cfg.split, cfg.folds, cfg.seed, block,
                           cfg.fold_labels, labels)
    buf = buffer if cfg.split == "blocks" else 0
    excluded = training_exclusion(cube.target_rows, cube.target_cols, fold_of, int(cfg.folds), buf)
    sizes = np.bincount(fold_of, minlength=cfg.folds)
    cb.log(f"SPLIT={cfg.split}: {cfg.folds} folds of {', '.join(str(int(x)) for x in sizes)} locations"
           + (f" (blocks of {block} x {block} px, training kept {buf} px away from held-out pixels)"
              if cfg.split == "blocks" else "")
           + "; one model per fold, trained together; early stopping on each fold's own training locations")
    if cube.station_ids:
        for f in range(int(cfg.folds)):
            cb.log(f"fold {f + 1} holds out: " + ", ".join(labels[i] for i in np.nonzero(fold_of == f)[0]))
    return {"split": cfg.split, "folds": int(cfg.folds), "fold_of": fold_of.tolist(), "locations": labels,
            "block_size": block if cfg.split == "blocks" else None, "buffer": buf, "excluded": excluded}


def cv_fold_index(cv: dict, n_idx) -> np.ndarray:
    return np.asarray(cv["fold_of"], np.int64)[np.asarray(n_idx, np.int64)]


def member_validation(model, sampler, t_idx, n_idx, obs, cv, y_std, amp_dtype=None, predict=None):
    """Every member on the validation samples; cross-validation folds only on their own training locations.
    Returns (estimate per sample: the mean of the members allowed there (NaN where none is), the mean of the
    members' losses, each member's MSE in normalised units (K,)). predict(t, n) -> (SM per member, ...):
    instead of predict_samples (distributed: the ranks' shares gathered)."""
    if predict is None:
        ym, _, _ = predict_samples(model, sampler, t_idx, n_idx, amp_dtype=amp_dtype, members=True)     # S, K
    else:
        ym = predict(t_idx, n_idx)[0]
    allowed = (np.ones(ym.shape, bool) if cv is None else ~cv["excluded"][:, np.asarray(n_idx, np.int64)].T)
    err = ((ym - np.asarray(obs)[:, None]) / y_std) ** 2
    per = np.array([(err[allowed[:, k], k]).mean() if allowed[:, k].any() else np.inf for k in range(ym.shape[1])])
    with np.errstate(invalid="ignore"):
        est = np.where(allowed.any(1), (ym * allowed).sum(1) / np.maximum(allowed.sum(1), 1), np.nan)
    fin = per[np.isfinite(per)]
    return est.astype(np.float32), float(fin.mean()) if len(fin) else float("nan"), per


CANCEL_SAMPLES = 512   # training windows for the additive mixture's reference after a cancel


def ensemble_residual_sd(obs, members) -> dict:
    """The error an ensemble's spread does not cover, from held-out samples: obs (S,), members (S, K) in target
    units. residual_sd = sqrt(max(0, mean(err^2) - mean(sd^2))), err the members' mean minus obs and sd the
    members' standard deviation (ddof 0): the variance of the error splits into what the members' disagreement
    explains and the rest (the drivers' own error, level biases), so the predictive standard deviation of a
    sample is sqrt(sd^2 + residual_sd^2). Also the fractions of the samples inside +-2 member sd and +-2
    predictive sd (about 0.95 when calibrated)."""
    obs = np.asarray(obs, np.float64)
    members = np.asarray(members, np.float64)
    ok = np.isfinite(obs) & np.isfinite(members).all(axis=1)
    o, m = obs[ok], members[ok]
    if not len(o):
        return {"residual_sd": 0.0, "mean_member_sd": float("nan"), "rmse": float("nan"), "n": 0,
                "inside_2sd_members": float("nan"), "inside_2sd_total": float("nan")}
    err = m.mean(axis=1) - o
    sd = m.std(axis=1)
    r2 = max(0.0, float(np.mean(err ** 2) - np.mean(sd ** 2)))
    total = np.sqrt(sd ** 2 + r2)
    return {"residual_sd": float(np.sqrt(r2)), "mean_member_sd": float(sd.mean()),
            "rmse": float(np.sqrt(np.mean(err ** 2))), "n": int(len(o)),
            "inside_2sd_members": float(np.mean(np.abs(err) <= 2 * sd)),
            "inside_2sd_total": float(np.mean(np.abs(err) <= 2 * total))}


def _file_digest(path) -> str:
    import hashlib
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def run_fingerprint(cfg: TrainConfig, model_type: str, mcfg: ModelConfig) -> dict:
    """What a resumed run must share with the run that wrote its checkpoint (and every torchrun rank with rank
    0): the training configuration but where it runs (RESUME_FREE), the model type and the model's
    configuration (but the plugin version); INIT_MODEL by its content, not its path."""
    out = {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE}
    if cfg.init_model:
        out["init_model"] = _file_digest(cfg.init_model)
    out["model_type"] = model_type
    out.update({k: v for k, v in mcfg.to_dict().items() if k != "version"})
    return json.loads(json.dumps(out, default=str))     # as the checkpoint's JSON header holds it


def init_from_model(cfg: TrainConfig, cube: Cube, model_type: str, options: dict, cb):
    """INIT_MODEL: the trained model to fine-tune on `cube`. It must have the dataset's factors and variables
    (same names, same order), patch size and sequence length; its architecture (MODEL, MIXTURE, HIDDEN, ...,
    ENSEMBLE) is kept, the given ones are not used (a note names those that differ). Normalisation: kept (the
    cube is then normalised with the model's statistics: a shallow copy of the cube is returned) or, with
    refit_normalisation, the new dataset's. Returns (model, its ModelConfig, the cube to train on, info)."""
    import dataclasses
    from .io import load_model
    path = str(cfg.init_model)
    if not os.path.exists(path):
        raise FileNotFoundError(f"INIT_MODEL: model file not found: {path}")
    model, mc, info = load_model(path)
    diffs = []
    only_m = [f for f in mc.factors if f not in cube.factors]
    only_d = [f for f in cube.factors if f not in mc.factors]
    if only_m:
        diffs.append(f"factor(s) {', '.join(only_m)} only in the model")
    if only_d:
        diffs.append(f"factor(s) {', '.join(only_d)} only in the dataset")
    for f in mc.factors:
        if f in cube.factors and list(mc.factors[f]) != list(cube.factors[f]):
            diffs.append(f"factor '{f}' has variables {', '.join(mc.factors[f])} in the model but "
                         f"{', '.join(cube.factors[f])} in the dataset")
    if not diffs and list(mc.variables) != list(cube.variables):
        diffs.append(f"the variables are in another order (model {', '.join(mc.variables)}; dataset "
                     f"{', '.join(cube.variables)})")
    if not diffs and list(mc.factors) != list(cube.factors):
        diffs.append(f"the factors are in another order (model {', '.join(mc.factors)}; dataset "
                     f"{', '.join(cube.factors)})")
    if diffs:
        raise ValueError(f"INIT_MODEL {path} was trained on another factor set than DATASET: {'; '.join(diffs)}. "
                         f"Fine-tuning needs the same factors and variables: prepare the dataset with the model's "
                         f"FACTOR_GROUPS, or train a new model")
    for name, a, b in (("PATCH_SIZE", mc.patch_size, cube.patch_size), ("SEQ_LEN", mc.seq_len, cube.seq_len)):
        if a != b:
            raise ValueError(f"INIT_MODEL {path} has {name} {a} but DATASET has {b}: prepare the dataset with "
                             f"{name}={a} to fine-tune this model")
    given = {"model_type": model_type, **options}
    differ = [f"{PARAMETER_NAMES.get(k, k.upper())} {v} (model: {getattr(mc, k)})" for k, v in given.items()
              if hasattr(mc, k) and k not in ("members",) and getattr(mc, k) != v]
    if "members" in options and int(options["members"]) != mc.members:
        differ.append(f"ENSEMBLE {options['members']} (model: {mc.members})")
    cb.log(f"INIT_MODEL: fine-tuning {path} ({mc.model_type}, {mc.members} member(s), trained with plugin "
           f"{mc.version or '?'})" + (f"; its architecture is kept, these given settings are not used: "
                                      f"{', '.join(differ)}" if differ else ""))
    if cfg.refit_normalisation:
        mc = dataclasses.replace(mc, x_mean=list(cube.x_mean), x_std=list(cube.x_std), y_mean=float(cube.y_mean),
                                 y_std=float(cube.y_std), version=__version__)
        cb.log("INIT_MODEL: normalisation re-fitted to the new dataset (REFIT_NORMALISATION)")
    else:
        mc = dataclasses.replace(mc, version=__version__)
        cube = copy.copy(cube)            # shallow: the arrays are shared, only the statistics change
        cube.x_mean, cube.x_std, cube.y_mean, cube.y_std = list(mc.x_mean), list(mc.x_std), mc.y_mean, mc.y_std
        cb.log("INIT_MODEL: the model's normalisation is kept (the new dataset is scaled with the statistics the "
               "model was trained with)")
    model.cfg = mc
    return model, mc, cube, {"path": path, "refit_normalisation": bool(cfg.refit_normalisation),
                             "source_best_epoch": info.get("best_epoch")}


def _restore_checkpoint(path, data_fp, run_fp, model, opt, sched):
    """Load a resume checkpoint into model/optimizer/schedule after checking that it belongs to this dataset
    and configuration. Returns (header, blob)."""
    header, blob = load_checkpoint(path)
    diffs = fingerprint_differences(header.get("dataset", {}), data_fp, PARAMETER_NAMES)
    if diffs:
        raise CheckpointError(f"RESUME: {path} was written for another dataset ({'; '.join(diffs[:6])}): resume "
                              f"with the DATASET it was written for, or start without RESUME")
    diffs = fingerprint_differences(header.get("config", {}), run_fp, PARAMETER_NAMES)
    if diffs:
        raise CheckpointError(f"RESUME: {path} was written with another configuration ({'; '.join(diffs[:6])}): "
                              f"resume with the same parameters, or start without RESUME")
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    return header, blob


def train(cube: Cube, out_path: str, model_type: str = "ismoe", cfg: TrainConfig = None,
          model_options: dict = None, callbacks: Callbacks = None, log_path: str = None):
    """Train a model on `cube` and save the best checkpoint (lowest validation loss) to `out_path`.

    Returns a dict: history (per epoch), best_epoch, cancelled, device, val/test metrics, split.
    Cancel (callbacks.is_cancelled) is honoured within one batch; the best model so far is kept, and so is the
    resume checkpoint (``resume_path(out_path)``, written every epoch, removed when training completes).
    Under torchrun (WORLD_SIZE > 1) the ranks train one model data-parallel (model/distributed.py).
    """
    from . import distributed
    cfg = cfg or TrainConfig()
    dd = distributed.setup(resolve_device(cfg.device, lambda _m: None), ensure(callbacks).log)
    try:
        return Trainer(cube, out_path, model_type, cfg, model_options, callbacks, log_path, dd).run()
    finally:
        distributed.close(dd)


class Trainer:
    """One training run in short phases, in the spirit of NeuralHydrology's BaseTrainer: ``run`` checks the
    configuration, splits the samples, builds the model, optimiser and sampler (small factory methods),
    restores a resume checkpoint, trains and validates epoch by epoch (``train_and_validate`` ->
    ``_train_epoch``, ``_validate``, ``_keep_best``) and finalises (best model, scoring, model file).

    The phases run in the order of one uninterrupted function: the seeded generator ``rng`` and torch's
    generator are drawn in the same order, so a run, its resumption and its torchrun ranks agree."""

    def __init__(self, cube: Cube, out_path: str, model_type: str, cfg: TrainConfig, model_options: dict,
                 callbacks: Callbacks, log_path: str, dd):
        self.cube, self.out_path, self.model_type, self.cfg = cube, out_path, model_type, cfg
        self.model_options, self.log_path, self.dd = model_options, log_path, dd
        self.cb = ensure(callbacks)
        self.main = dd is None or dd.is_main
        if not self.main:            # one log, one progress: rank 0's
            self.cb = Callbacks(is_cancelled=self.cb.is_cancelled)
            self.log_path = None

    def run(self) -> dict:
        self._check_config()
        self._setup_device()
        self._split()
        self._build()
        self._plan_epochs()
        self._restore()
        self.train_and_validate()
        return self._finalise()

    # ------------------------------------------------------------------ configuration and device
    def _check_config(self):
        cfg = self.cfg
        if cfg.epochs < 1:
            raise ValueError(f"EPOCHS must be >= 1, got {cfg.epochs}")
        if cfg.batch_size < 1:
            raise ValueError(f"BATCH_SIZE must be >= 1, got {cfg.batch_size}")
        if not cfg.lr > 0:
            raise ValueError(f"LEARNING_RATE must be > 0, got {cfg.lr}")
        if cfg.consecutive_days < 1:
            raise ValueError(f"CONSECUTIVE_DAYS must be >= 1, got {cfg.consecutive_days}")
        from .folds import SPLITS
        if cfg.split not in SPLITS:
            raise ValueError(f"SPLIT must be one of {', '.join(SPLITS)}, got '{cfg.split}'")
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"LR_SCHEDULE must be one of {', '.join(SCHEDULES)}, got '{cfg.schedule}'")
        if cfg.init_model and cfg.split != "time":
            raise ValueError(f"INIT_MODEL fine-tunes one model (or ensemble) with SPLIT=time; SPLIT={cfg.split} "
                             f"trains one new model per fold: use SPLIT=time with INIT_MODEL")

    def _setup_device(self):
        from . import distributed
        cb = self.cb
        self.device = distributed.rank_device(resolve_device(self.cfg.device, cb.log), self.dd)
        self.data_fp = dataset_fingerprint(self.cube)     # before INIT_MODEL may replace the normalisation statistics
        self.amp_dtype = autocast_dtype(self.device, self.cfg.amp)
        cb.log(f"device: {self.device}" + (f" (autocast {self.amp_dtype})" if self.amp_dtype else ""))
        from ..threads import apply_threads
        apply_threads(self.cfg.threads, self.device.type, cb.log)

    # ------------------------------------------------------------------ split
    def _split(self):
        """The train/validation/test samples, their dates and counts (``self.split``), and per location."""
        cube, cfg, cb = self.cube, self.cfg, self.cb
        train_m, val_m, test_m = split_masks(cube.dates, cfg.val_start, cfg.test_start)
        periods = {"train": train_m, "val": val_m, "test": test_m}
        sample_masks = {k: cube.sample_mask(m, cfg.gap_policy) for k, m in periods.items()}   # each computed once
        self.tr_mask = sample_masks["train"]
        (tr_t, tr_n), (va_t, va_n), (te_t, te_n) = (
            (a.astype(np.int64) for a in np.nonzero(sample_masks[k])) for k in ("train", "val", "test"))

        def span(mask):
            return [str(cube.dates[mask][0]), str(cube.dates[mask][-1])] if mask.any() else None
        split = {"train": span(train_m), "val": span(val_m), "test": span(test_m),
                 "n_train": int(len(tr_t)), "n_val": int(len(va_t)), "n_test": int(len(te_t))}
        per_location = report_location_samples(cube, periods, cfg.gap_policy, cb, sample_masks)
        if len(tr_t) == 0:
            raise ValueError("the training period has no valid sample (target present and a full "
                             f"{cube.seq_len}-day input window): check the dates, VAL_START/TEST_START and SEQ_LEN")
        if len(va_t) == 0:
            raise ValueError("the validation period has no valid sample: move VAL_START earlier or TEST_START later")
        cb.log(f"samples: train {len(tr_t)}, validation {len(va_t)}, test {len(te_t)}; split {json.dumps(split)}")
        split["per_location"] = per_location
        self.split = split
        self.tr_t, self.tr_n, self.va_t, self.va_n, self.te_t, self.te_n = tr_t, tr_n, va_t, va_n, te_t, te_n

    # ------------------------------------------------------------------ build
    def _build(self):
        """Folds, the model (new or INIT_MODEL), its DDP wrapper, the optimiser and the window sampler."""
        cfg, cb = self.cfg, self.cb
        self.rng = np.random.default_rng(cfg.seed)
        self.options = dict(self.model_options or {})
        self.cv = None
        if cfg.split != "time":
            self.cv = setup_folds(self.cube, cfg, self.options, cb)
            self.options.update(members=self.cv["folds"], member_kind="folds")
        self.model, self.mcfg = self._build_model()
        self.run_fp = run_fingerprint(cfg, self.model_type, self.mcfg)
        self.ddp_forward = self._build_ddp()
        cv = self.cv
        self.excluded_t = None if cv is None else torch.from_numpy(cv["excluded"]).to(self.device)   # K, locations
        self.info_cv = None if cv is None else {k: v for k, v in cv.items() if k != "excluded"}
        self._log_model_notes()
        self.run_model = torch.compile(self.model) if cfg.compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.stateful = self.mcfg.stateful
        if self.stateful and cfg.supervised_days < 1:
            raise ValueError(f"SUPERVISED_DAYS must be >= 1 (the days of each training sequence that carry the "
                             f"loss), got {cfg.supervised_days}")
        self.context = self.mcfg.context_days
        self.sampler = self._build_sampler()

    def _build_model(self):
        """(model on the device, its ModelConfig); INIT_MODEL may replace self.cube (its normalisation)."""
        cfg = self.cfg
        self.init_info = None
        if cfg.init_model:
            model, mcfg, self.cube, self.init_info = init_from_model(cfg, self.cube, self.model_type, self.options,
                                                                     self.cb)
            model, self.model_type = model.to(self.device), mcfg.model_type
            torch.manual_seed(cfg.seed)         # dropout's draws, as build_model leaves them for a new model
        else:
            mcfg = model_config_for(self.cube, self.model_type, **self.options)
            model = build_model(mcfg, cfg.seed).to(self.device)      # member n's weights from seed + n
        return model, mcfg

    def _build_ddp(self):
        """The DistributedDataParallel forward under torchrun (None otherwise), after checking that every rank
        reads the same dataset with the same configuration."""
        dd = self.dd
        if dd is None:
            return None
        from . import distributed
        distributed.check_same(dd, {"dataset": self.data_fp, "config": self.run_fp}, lambda a, b: (
            fingerprint_differences(a["dataset"], b["dataset"], PARAMETER_NAMES)
            + fingerprint_differences(a["config"], b["config"], PARAMETER_NAMES)))
        from torch.nn.parallel import DistributedDataParallel
        device = self.device
        return DistributedDataParallel(distributed.MembersForward(self.model),
                                       device_ids=[device.index] if device.type == "cuda" else None)

    def _log_model_notes(self):
        cfg, cb, mcfg, model, model_type = self.cfg, self.cb, self.mcfg, self.model, self.model_type
        if mcfg.members > 1 and self.cv is None:
            cb.log(f"ensemble of {mcfg.members} members (initial weights from seeds {mcfg.member_seeds}), trained "
                   f"together in one pass (stacked like the experts, the same batches"
                   + (", each member weighing every window by its own Poisson(1) bootstrap draw" if cfg.bootstrap
                      else "")
                   + "); early stopping and the best checkpoint per member")
        if cfg.expert_loss and model_type == "ismoe" and model.mixture != "convex":
            cb.log(f"EXPERT_LOSS applies to the convex mixture only (its experts estimate SM); the {model.mixture} "
                   "mixture's experts output contributions, so it is not used")
        if model_type == "ismoe" and model.mixture == "gated" and mcfg.router_input == "expert_states":
            cb.log("note: the gated mixture with ROUTER_INPUT expert_states gates each factor from its own state "
                   "only; all_states lets a gate see where it is (the other factors), which is what the measured "
                   "gated numbers use (README, model section)")

    def _build_sampler(self):
        cube, cfg, cb, mcfg = self.cube, self.cfg, self.cb, self.mcfg
        from ..data.chunked import make_sampler     # issue 15 item 2: in memory, or chunk-wise (cfg.cube_in_memory)
        sampler = make_sampler(cube, self.device, self.context - (cube.seq_len - 1), cfg.cube_in_memory, cb.log,
                               WindowSampler)
        if self.stateful:
            cb.log(f"stateful experts: sequences of {mcfg.spin_up} spin-up + {cfg.supervised_days} supervised "
                   f"days (loss on the last {cfg.supervised_days}), {max(1, cfg.batch_size // cfg.supervised_days)} "
                   f"sequences per batch")
            if mcfg.spin_up > int(self.tr_t.min()):
                cb.log(f"note: the first {mcfg.spin_up - int(self.tr_t.min())} days of spin-up before the earliest "
                       f"training sample lie before the data ({cube.dates[0]}): they are read as missing input, as "
                       f"prediction does where it has no warm-up")
        return sampler

    def _plan_epochs(self):
        """The validation samples, the runs and batches of an epoch, and the learning-rate schedule."""
        cube, cfg = self.cube, self.cfg
        self.vt, self.vn = select_samples(self.rng, self.va_t, self.va_n, cfg.val_samples, self.stateful)
        self.v_obs = cube.y[self.vt, self.vn]
        n_tr = len(self.tr_t)
        per_epoch = min(cfg.samples_per_epoch, n_tr) if cfg.samples_per_epoch > 0 else n_tr
        m = cfg.supervised_days if self.stateful else cfg.consecutive_days
        self.m = max(1, min(m, cube.n_dates - cube.seq_len + 1))
        self.runs_per_batch = max(1, cfg.batch_size // self.m)
        self.n_runs = math.ceil(per_epoch / self.m)
        self.n_batches = max(1, math.ceil(self.n_runs / self.runs_per_batch))
        self.total_steps = cfg.epochs * self.n_batches
        self.sched = self._build_scheduler()

    def _build_scheduler(self):
        if self.cfg.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=self.cfg.lr, total_steps=self.total_steps,
                                                       pct_start=0.15)
        return torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0)

    # ------------------------------------------------------------------ state and resume
    def _restore(self):
        """The early-stopping state, the model file's info, and (RESUME) the checkpoint of the last finished
        epoch, which restores everything the next epoch depends on (issue 15 item 6): the run goes on as if
        it had never stopped."""
        cfg, cb, cube, dd = self.cfg, self.cb, self.cube, self.dd
        self.history, self.best, self.best_state, self.bad_epochs, self.cancelled = [], float("inf"), None, 0, False
        self.best_epoch = 0
        K = self.K = self.model.members
        self.boot = self.cv is None and K > 1 and cfg.bootstrap
        self.best_m, self.best_epoch_m, self.bad_m = np.full(K, np.inf), np.zeros(K, np.int64), np.zeros(K, np.int64)
        self.t0 = time.time()
        self.step = 0
        self.info_base = {"model_type": self.model_type, "train": asdict(cfg), "split": self.split,
                          "grid": cube.grid}   # predict warns when it runs on another resolution or CRS
        if self.init_info is not None:
            self.info_base["init_model"] = self.init_info
        ckpt_path = self.ckpt_path = resume_path(self.out_path)
        read_ckpt = cfg.resume if isinstance(cfg.resume, str) and cfg.resume else ckpt_path
        self.start_epoch, self.stopped = 0, False
        if cfg.resume and (read_ckpt != ckpt_path or os.path.exists(ckpt_path)):
            self._load_checkpoint(read_ckpt)
        elif cfg.resume:
            cb.log(f"RESUME: no checkpoint at {ckpt_path}: starting at epoch 1")
        elif self.main and os.path.exists(ckpt_path):
            cb.log(f"note: the resume checkpoint {ckpt_path} of an earlier run is replaced (RESUME is off)")
        if dd is not None and cfg.resume:
            from . import distributed
            starts = distributed.gather_objects(dd, self.start_epoch)
            if len(set(starts)) > 1:
                raise CheckpointError(f"RESUME: the torchrun ranks found different checkpoints at {read_ckpt} "
                                      f"(epochs {starts} by rank): the checkpoint must lie on a file system every "
                                      f"rank reads")

    def _load_checkpoint(self, read_ckpt):
        cfg, device = self.cfg, self.device
        hdr, blob = _restore_checkpoint(read_ckpt, self.data_fp, self.run_fp, self.model, self.opt, self.sched)
        self.start_epoch, self.step, self.stopped = int(hdr["epoch"]), int(hdr["step"]), bool(hdr["stopped"])
        self.history, self.best, self.best_epoch = hdr["history"], float(hdr["best"]), int(hdr["best_epoch"])
        self.bad_epochs = int(hdr["bad_epochs"])
        self.best_m = np.asarray(hdr["best_m"], np.float64)
        self.best_epoch_m = np.asarray(hdr["best_epoch_m"], np.int64)
        self.bad_m = np.asarray(hdr["bad_m"], np.int64)
        self.best_state = ({k: v.to(device) for k, v in blob["best_state"].items()} if blob.get("best_state")
                           else None)
        self.rng.bit_generator.state = hdr["numpy_rng"]
        torch.set_rng_state(blob["torch_rng"])
        if device.type == "cuda" and blob.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(blob["cuda_rng"], device)
        self.info_base["resumed_from_epoch"] = self.start_epoch
        self.cb.log(f"RESUME: continuing from {read_ckpt} after epoch {self.start_epoch}/{cfg.epochs}"
                    + (" (training had stopped early there: only the final scoring is left)" if self.stopped
                       else ""))
        if self.log_path:        # the log as the uninterrupted run writes it
            with open(self.log_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.history)

    def _write_checkpoint(self, epoch_done, stop_now):
        if not self.main:
            return
        model, device = self.model, self.device
        tensors = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                   "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                   "torch_rng": torch.get_rng_state()}
        if self.best_state is not None:
            tensors["best_state"] = {k: v.detach().cpu() for k, v in self.best_state.items()}
        if device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(device)
        save_checkpoint(self.ckpt_path, {
            "epoch": epoch_done, "step": self.step, "stopped": bool(stop_now), "history": self.history,
            "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "best_m": self.best_m.tolist(), "best_epoch_m": self.best_epoch_m.tolist(), "bad_m": self.bad_m.tolist(),
            "numpy_rng": self.rng.bit_generator.state, "dataset": self.data_fp, "config": self.run_fp,
            "out_path": str(self.out_path), "plugin_version": __version__}, tensors)

    # ------------------------------------------------------------------ epochs
    def train_and_validate(self):
        """Epochs from the one after the restored checkpoint until EPOCHS, early stopping or cancel."""
        cfg, cb = self.cfg, self.cb
        if self.main:   # issue 13: a model file that cannot be written (disk full, no permission) fails here
            probe_write(self.out_path, sum(v.numel() * v.element_size() for v in self.model.state_dict().values())
                        + (1 << 16), "OUTPUT", "the model file")
        last = cfg.epochs + 1 if not self.stopped else self.start_epoch + 1
        for epoch in range(self.start_epoch + 1, last):
            train_loss = self._train_epoch(epoch)
            if self.cancelled:           # the partial epoch is not validated: cancel returns within seconds
                cb.log("cancelled: keeping the best model so far" if self.best_state is not None else "cancelled")
                break
            row, member_loss = self._validate(epoch, train_loss)
            stop = self._keep_best(epoch, row, member_loss)
            self._write_checkpoint(epoch, stop)
            if stop:
                cb.log(f"early stop: no validation improvement for {cfg.patience} epochs"
                       + (" in any member" if self.K > 1 else ""))
                break

    def _train_epoch(self, epoch) -> float:
        """One epoch of batches of runs drawn from the training samples; sets self.cancelled on cancel.
        Returns the mean training loss over the valid windows."""
        from . import distributed
        cfg, cb, dd, device, model, rng, sampler = (self.cfg, self.cb, self.dd, self.device, self.model, self.rng,
                                                    self.sampler)
        m, n_runs, runs_per_batch = self.m, self.n_runs, self.runs_per_batch
        model.train()
        run_end, run_loc, run_valid = draw_runs(rng, self.tr_mask, self.tr_t, self.tr_n, n_runs, m,
                                                self.cube.seq_len)
        if hasattr(sampler, "order_runs"):      # issue 15 item 2: a chunk-wise sampler groups the runs by block
            run_end, run_loc, run_valid = sampler.order_runs(rng, run_end, run_loc, run_valid, m)
        tot, cnt = 0.0, 0
        for b in range(self.n_batches):
            if distributed.any_rank(dd, cb.is_cancelled(), device):
                self.cancelled = True
                break
            g0, g1 = b * runs_per_batch, min(n_runs, (b + 1) * runs_per_batch)
            if g1 <= g0:
                break
            # distributed: every rank draws the global batch (same generator), cuts its share [r0, r1) of its runs
            r0, r1 = distributed.share(dd, g1 - g0)
            xb, yb, db = sampler.batch(run_end[g0 + r0:g0 + r1], run_loc[g0 + r0:g0 + r1], m, self.context)
            valid_g = run_valid.reshape(m, n_runs)[:, g0:g1]
            n_valid = int(valid_g.sum())
            valid = torch.from_numpy(valid_g[:, r0:r1].reshape(-1)).to(yb.device)
            with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                mm, denom = self._member_weights(run_loc[g0:g1], valid_g, n_valid, r0, r1, g1 - g0, yb.device)
                loss, _ = loss_terms(self.run_model, xb, yb, db, cfg, valid, mm, self.ddp_forward, denom, m)
            self.opt.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients: each rank's share of the global loss, times the world size
            (loss * dd.world if dd is not None else loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            self.opt.step()
            if self.step < self.total_steps - 1:
                self.sched.step()
            self.step += 1
            tot += float(loss.detach()) * n_valid
            cnt += n_valid
            cb.progress(((epoch - 1) * self.n_batches + b + 1) / self.total_steps)
        if dd is not None:      # the ranks' shares of the batches' losses
            tot = float(distributed.sum_ranks(dd, [tot], device)[0])
        return tot / max(cnt, 1)

    def _member_weights(self, locs_g, valid_g, n_valid, r0, r1, G, dev):
        """(member mask or bootstrap weights (on `dev`) of this rank's rows, or None; the global batch's
        denominators under torchrun, or None) for a batch of G runs (rows j * G + g: location locs_g[g])."""
        m, dd = self.m, self.dd
        mm = denom = None
        if self.excluded_t is not None:
            locs = torch.as_tensor(locs_g, device=self.excluded_t.device).repeat(m)
            mm = ~self.excluded_t[:, locs].t()
        elif self.boot:
            mm = torch.from_numpy(self.rng.poisson(1.0, (m * G, self.model.members)).astype(np.float32)
                                  ).to(dev)
        if dd is not None:      # this rank's rows of the global batch, the global batch's denominators
            if mm is not None:
                vg = torch.from_numpy(valid_g.reshape(-1)).to(mm.device)
                denom = (mm.float() * vg[:, None].float()).sum(0)
                mm = mm.view(m, G, -1)[:, r0:r1].reshape(-1, mm.shape[-1])
            else:
                denom = n_valid
        return mm, denom

    def _vpredict(self, t_, n_, amp_, members=False):
        """Validation estimates; distributed: split by location across the ranks and gathered."""
        from . import distributed
        return distributed.sharded_predict(self.dd, lambda tt, nn: predict_samples(
            self.model, self.sampler, tt, nn, amp_dtype=amp_, members=members), t_, n_)

    def _validate(self, epoch, train_loss):
        """The epoch's validation loss (per member for ensembles and folds), CC and RMSE: its history row, logged
        and written to the log file. Returns (row, each member's loss)."""
        cube, cfg, cb = self.cube, self.cfg, self.cb
        amp = self.amp_dtype
        if self.cv is None and self.K == 1:
            est = self._vpredict(self.vt, self.vn, amp)[0]
            val_loss = float(np.mean(((est - self.v_obs) / cube.y_std) ** 2))
            member_loss = np.array([val_loss])
        else:               # per member; a fold's model on its own training locations (never a held-out one)
            est, val_loss, member_loss = member_validation(self.model, self.sampler, self.vt, self.vn, self.v_obs,
                                                           self.cv, cube.y_std, amp,
                                                           lambda t_, n_: self._vpredict(t_, n_, amp, True))
        cc, rmse = cc_rmse(self.v_obs, est)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_cc": cc,
               "val_rmse": rmse, "seconds": round(time.time() - self.t0, 2)}
        self.history.append(row)
        cb.log(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
               f"val CC {cc:.3f}, val RMSE {rmse:.4f}")
        if self.log_path:
            with open(self.log_path, "a" if epoch > 1 else "w") as f:
                f.write(json.dumps(row) + "\n")
        return row, member_loss

    def _keep_best(self, epoch, row, member_loss) -> bool:
        """Early stopping and the best checkpoint (per member for ensembles and folds): the model file holds
        the best model so far. Returns whether to stop."""
        cfg, model, K = self.cfg, self.model, self.K
        if K == 1:
            val_loss = row["val_loss"]
            if val_loss < self.best:
                self.best, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
                self.best_state = copy.deepcopy(model.state_dict())
                if self.main:
                    save_model(self.out_path, model, {**self.info_base, "best_epoch": epoch,
                                                      "history": self.history})
            else:
                self.bad_epochs += 1
            return self.bad_epochs >= cfg.patience
        better = [k for k in range(K) if member_loss[k] < self.best_m[k]]
        if self.best_state is None:
            self.best_state = copy.deepcopy(model.state_dict())
        elif better:
            copy_members(self.best_state, {k: v.detach().clone() for k, v in model.state_dict().items()}, better,
                         K, model.n_experts)
        for k in range(K):
            if k in better:
                self.best_m[k], self.best_epoch_m[k], self.bad_m[k] = member_loss[k], epoch, 0
            else:
                self.bad_m[k] += 1
        row["member_val_loss"] = [float(v) for v in member_loss]
        self.best_epoch = int(self.best_epoch_m.max())
        if better and self.main:
            save_model(self.out_path, model, {**self.info_base, "best_epoch": self.best_epoch,
                                              "member_best_epochs": self.best_epoch_m.tolist(),
                                              "history": self.history}, state=self.best_state)
        return bool((self.bad_m >= cfg.patience).all())

    # ------------------------------------------------------------------ finalise
    def _finalise(self) -> dict:
        """The best model back in place, the mixture's contribution reference, and (rank 0) the final scoring
        and the model file; a cancelled run keeps its best model and its resume checkpoint."""
        if self.best_state is None:
            raise Cancelled("cancelled before the first epoch ended: no model was written")
        result = {"history": self.history, "best_epoch": self.best_epoch, "cancelled": self.cancelled,
                  "device": str(self.device), "split": self.split, "model_type": self.model_type}
        if not self.main:            # rank 0 scores and writes the model
            result["rank"] = self.dd.rank
            return result
        cfg, cb, model, info_base = self.cfg, self.cb, self.model, self.info_base
        model.load_state_dict(self.best_state)
        if model.mixture in ("additive", "gated"):
            # after cancel on a bounded sample, so that cancel returns within seconds (the reference is a mean)
            ref = set_contribution_reference(model, self.sampler, self.tr_t, self.tr_n, self.rng,
                                             min(cfg.val_samples, CANCEL_SAMPLES) if self.cancelled
                                             else cfg.val_samples)
            cb.log("mean contribution per factor where it has signal (training windows, normalised SM units; the "
                   "weights are shares of the departures from it): "
                   + ", ".join(f"{f} {v:+.3f}" for f, v in zip(model.output_names, ref)))
        if self.start_epoch:
            result["resumed_from_epoch"] = self.start_epoch
        if self.K > 1:
            info_base["member_best_epochs"] = result["member_best_epochs"] = self.best_epoch_m.tolist()
            cb.log("best epoch per member: " + ", ".join(str(int(e)) for e in self.best_epoch_m))
        if self.cv is not None:
            info_base["cv"] = result["cv"] = self.info_cv
        if self.cancelled:
            return self._finalise_cancelled(result)
        self._score_validation(result)
        if len(self.te_t):
            self._score_test(result)
        save_model(self.out_path, model, {**info_base, "best_epoch": self.best_epoch, "history": self.history,
                                          "val_cc": result["val_cc"], "test_cc": result.get("test_cc"),
                                          "test_cc_location_median": result.get("test_cc_location_median"),
                                          "test_location_skill": result.get("test_location_skill")})
        if os.path.exists(self.ckpt_path):       # training completed: nothing left to resume
            os.remove(self.ckpt_path)
        cb.progress(1.0)
        return result

    def _finalise_cancelled(self, result) -> dict:
        cb, best_epoch, history = self.cb, self.best_epoch, self.history
        best_row = next(r for r in history if r["epoch"] == best_epoch)
        result["val_cc"], result["val_rmse"] = best_row["val_cc"], best_row["val_rmse"]
        cb.log(f"cancelled: the model of epoch {best_epoch} is kept (validation CC {best_row['val_cc']:.3f}); the "
               f"final validation and test scoring are skipped: score it with ismoe:evaluate")
        save_model(self.out_path, self.model, {**self.info_base, "best_epoch": best_epoch, "history": history,
                                               "cancelled": True, "val_cc": result["val_cc"], "test_cc": None})
        if os.path.exists(self.ckpt_path):
            result["resume_checkpoint"] = self.ckpt_path
            cb.log(f"the resume checkpoint of epoch {history[-1]['epoch'] if history else 0} is kept in "
                   f"{self.ckpt_path}: run again with RESUME to continue where this run stopped")
        cb.progress(1.0)
        return result

    def _scored(self, t_, n_, amp_):
        """(estimate, the ensemble members' estimates (S, K) or None): one pass over the samples."""
        model, sampler = self.model, self.sampler
        if self.cv is not None:
            return member_validation(model, sampler, t_, n_, self.cube.y[t_, n_], self.cv, self.cube.y_std,
                                     amp_)[0], None
        if self.K > 1:                 # the ensemble's estimate is its members' mean
            ym_ = predict_samples(model, sampler, t_, n_, amp_dtype=amp_, members=True)[0]
            return ym_.mean(axis=1), ym_
        return predict_samples(model, sampler, t_, n_, amp_dtype=amp_)[0], None

    def _score_validation(self, result):
        """The best model's validation CC and RMSE, the autocast check (a model it fails is scored and predicted
        in fp32) and an ensemble's spread."""
        cb, info_base, v_obs = self.cb, self.info_base, self.v_obs
        est, v_members = self._scored(self.vt, self.vn, self.amp_dtype)
        if self.amp_dtype is not None:
            est_fp32, members_fp32 = self._scored(self.vt, self.vn, None)
            check = autocast_cc_check(v_obs, est, est_fp32, self.amp_dtype, AMP_CC_TOL)
            result["amp_check"] = info_base["amp_check"] = check
            info_base["amp_ok"] = check["ok"]
            cb.log(f"autocast check: validation CC {check['val_cc_amp']:.4f} with {check['dtype']} autocast, "
                   f"{check['val_cc_fp32']:.4f} in fp32 (change {check['delta']:+.4f}, allowed {check['tol']})")
            if not check["ok"]:
                cb.log(f"warning: {check['dtype']} autocast changes this model's validation CC by more than "
                       f"{check['tol']}: it is scored here and predicted by ismoe:predict in fp32")
                self.amp_dtype, est, v_members = None, est_fp32, members_fp32
        result["val_cc"], result["val_rmse"] = cc_rmse(v_obs, est)
        if v_members is not None:
            unc = ensemble_residual_sd(v_obs, v_members)
            info_base["uncertainty"] = result["uncertainty"] = unc
            cb.log(f"ensemble spread on the validation samples: mean member sd {unc['mean_member_sd']:.4f}, RMSE of "
                   f"the mean {unc['rmse']:.4f}; residual sd {unc['residual_sd']:.4f} (what the members' "
                   f"disagreement does not cover): predictive sd = sqrt(member sd^2 + {unc['residual_sd']:.4f}^2); "
                   f"{100 * unc['inside_2sd_members']:.0f}% of the validation observations inside +-2 member sd, "
                   f"{100 * unc['inside_2sd_total']:.0f}% inside +-2 predictive sd")

    def _score_test(self, result):
        """Pooled and per-location test skill (out of fold for SPLIT=locations|blocks)."""
        from .metrics import describe_location_skill, location_skill_samples, location_skill_summary
        cube, cfg, cb, cv, model, sampler = self.cube, self.cfg, self.cb, self.cv, self.model, self.sampler
        tt, tn = select_samples(self.rng, self.te_t, self.te_n, 50000, self.stateful)
        if cv is None:
            est, _, _ = predict_samples(model, sampler, tt, tn, amp_dtype=self.amp_dtype)
        else:   # out of fold: each location by the model of its fold, which never saw it
            ym, _, _ = predict_samples(model, sampler, tt, tn, amp_dtype=self.amp_dtype, members=True)
            est = ym[np.arange(len(tn)), cv_fold_index(cv, tn)]
            cb.log(f"test period, out of fold ({cfg.split}, {cv['folds']} folds): every location estimated by the "
                   f"model that never trained on it")
        result["test_cc"], result["test_rmse"] = cc_rmse(cube.y[tt, tn], est)
        # per-location test skill (CC over time, bias, ubRMSE; the anomaly CC needs the model's own
        # training climatology: ismoe:evaluate reports it)
        loc_skill = location_skill_samples(cube.y[tt, tn], est, tn, cube.y.shape[1])
        result["test_location_skill"] = location_skill_summary(loc_skill)
        result["test_cc_location_median"] = loc_skill["summary"]["cc"]["median"]
        cb.log(f"test: pooled CC {result['test_cc']:.3f}; {describe_location_skill(loc_skill)}")

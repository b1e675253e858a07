"""The plugin's option lists and value rules: one owner, no torch, no qgis (plain Python).

The Processing algorithms (their enum parameters), the CLI (its choices), the core (its checks) and the
Makefile (``TORCH_VERSION``) read them from here; tests/test_architecture.py checks that no other module
defines one. A Processing enum is stored as an index (in .model3 files and saved settings): append new
values at the end, never reorder.

Rules, checked where the value enters the core (prepare_dataset for a user's value, ModelConfig for a model
file's): :func:`patch_size_problem`.
"""

# PyTorch the plugin installs and is tested with (ismoe:installdependencies, `make install`: the Makefile
# reads this line).
TORCH_VERSION = "2.13.0"

MODEL_TYPES = ("ismoe", "cnn_lstm", "mean_expert")
# How far the experts remember (MEMORY): "window": every output day runs the LSTM over its own SEQ_LEN-day
# window from zero state (memory capped at SEQ_LEN days, SEQ_LEN LSTM steps per pixel-day); "stateful": the
# LSTM runs through time and carries its state from day to day (trained on sequences of SPIN_UP + N days with
# the loss on the last N, predicted by streaming: one LSTM step per pixel-day, whatever the memory).
MEMORIES = ("window", "stateful")
MIXTURES = ("convex", "scaled", "additive", "gated")
MIXTURE_DEFAULT = "additive"
# What a weight raster holds, per mixture (prediction.json "weights_meaning", docs/architecture.md)
WEIGHT_MEANING = {
    "convex": "router softmax weight w_e of the convex mixture sum_e w_e y_e",
    "scaled": "router softmax weight w_e of the scaled mixture mu + E sum_e w_e c_e",
    "additive": "share of the squared departure of the factor's contribution from its training mean: "
                "(c_e - r_e)^2 / sum_f (c_f - r_f)^2 in SM = mu + sum_e c_e",
    "gated": "share of the squared departure of the factor's gated contribution from its training mean: "
             "(g_e c_e - r_e)^2 / sum_f (g_f c_f - r_f)^2 in SM = mu + sum_e g_e c_e, gates g = E softmax(router)",
}
# the mixtures whose estimate is mu + sum_e c_e, so each factor's share of the contribution variance is defined
# (prediction folders' variance_share.tif, model/contribution_stats.py)
VARIANCE_SHARE_MIXTURES = ("additive", "gated")
ROUTER_INPUTS = ("expert_states", "all_states", "inputs", "inputs_doy", "inputs_mean")
GAP_POLICIES = ("skip", "fill")
CUBE_MODES = ("auto", "memory", "chunked")       # issue 15 item 2: the window sampler (data/chunked.py)
SCHEDULES = ("onecycle", "constant")
SPLITS = ("time", "locations", "blocks")
DEVICES = ("auto", "cuda", "cpu")
RESAMPLINGS = ("auto", "bilinear", "average", "nearest")
EVAL_PERIODS = ("test", "validation", "all")
BASELINES = ("persistence", "climatology")
TORCH_VARIANTS = ("auto", "cpu", "cuda")         # auto: CUDA when nvidia-smi finds an NVIDIA GPU, else CPU
# the seasonal-importance chart: x axis (label, period kind) and style, the dock's and the algorithm's
CHART_PERIODS = (("Month", "month"), ("Day of year", "doy"), ("Season", "season"))
CHART_STYLES = ("Lines", "Stacked areas")
# what the seasonal-importance chart shows (ismoe:seasonalimportance MEASURE, the dock): auto = the variance share
# where the prediction folder has it (additive and gated models), else the daily weights (model/importance.py)
IMPORTANCE_MEASURES = ("auto", "weight", "variance_share")


def enum_order(values, default):
    """``values`` with ``default`` first: the order of a Processing enum whose default is index 0 (a value
    appended to ``values`` is appended to the enum, so stored indices keep their meaning)."""
    return (default,) + tuple(v for v in values if v != default)


MIXTURE_ENUM = enum_order(MIXTURES, MIXTURE_DEFAULT)      # ismoe:train MIXTURE


def patch_size_problem(patch_size):
    """The odd-patch rule: None for an odd whole number >= 1, else the message (names PATCH_SIZE)."""
    try:
        ok = int(patch_size) == patch_size and patch_size >= 1 and int(patch_size) % 2 == 1
    except (TypeError, ValueError):
        ok = False
    return None if ok else f"PATCH_SIZE must be an odd whole number >= 1 (e.g. 3, 5, 7), got {patch_size}"

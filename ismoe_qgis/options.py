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
# the default, chosen on the three criteria of issue 16 at once (README "Model"): on the demo region (3 seeds)
# gated with ROUTER_INPUT inputs_mean is within 0.02 CC of cnn_lstm in every sub-region (additive is 0.08-0.09
# behind in two), its variance shares put the planted pair top-2 in 8 of 9 sub-region x seed cells (additive 8 of
# 9) and give the no-signal factor 0.000; on the two Caravan basins it is 0.003-0.004 CC above additive
MIXTURE_DEFAULT = "gated"
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
# "auto" (the default): inputs_mean for the gated mixture (its gates must not carry another factor's weather),
# expert_states for the convex and scaled ones (:func:`router_input_for`); a model file records the resolved one
ROUTER_INPUTS = ("expert_states", "all_states", "inputs", "inputs_doy", "inputs_mean", "auto")
ROUTER_INPUT_DEFAULT = "auto"
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


# ismoe:train MIXTURE: the order of the first release of MIXTURE (additive first), frozen so that saved models'
# and settings' indices keep their meaning; the default (MIXTURE_DEFAULT) is no longer index 0
MIXTURE_ENUM = ("additive", "convex", "scaled", "gated")


def router_input_for(mixture: str, router_input: str) -> str:
    """The router input a model uses: `router_input`, or for "auto" the one measured best with `mixture`
    (gated: inputs_mean; otherwise expert_states)."""
    if router_input != "auto":
        return router_input
    return "inputs_mean" if mixture == "gated" else "expert_states"


def patch_size_problem(patch_size):
    """The odd-patch rule: None for an odd whole number >= 1, else the message (names PATCH_SIZE)."""
    try:
        ok = int(patch_size) == patch_size and patch_size >= 1 and int(patch_size) % 2 == 1
    except (TypeError, ValueError):
        ok = False
    return None if ok else f"PATCH_SIZE must be an odd whole number >= 1 (e.g. 3, 5, 7), got {patch_size}"

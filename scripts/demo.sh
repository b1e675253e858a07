#!/bin/bash
# The ISMoE demo, headless, through the real qgis_process binary (as a user would run it):
#   synthetic demo region -> ismoe:preparedataset -> ismoe:train -> ismoe:predict -> summary
#
#   make demo                 # outputs in out/demo
#   make demo OUT=/tmp/demo   # elsewhere
#   OUT=/tmp/demo scripts/demo.sh
#
# Needs `make install` first (QGIS, .venv with torch, plugin enabled).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/env.sh
source "$HERE/env.sh"          # QT_QPA_PLATFORM, PYTHONPATH, QGIS_PLUGINPATH, QGIS_PROCESS
cd "$ISMOE_ROOT"

OUT=$(realpath -m "${OUT:-out/demo}")
PY=${PY:-$ISMOE_ROOT/.venv/bin/python}
REGION="$OUT/region"
LOGS="$OUT/logs"

# ============================================================================ parameters
# Demo region size (the issue: about 48x48 px x 3 years daily, 6 factors; < ~5 min on 2 cores).
DEMO_ARGS=(--size 48 --years 3 --seed 42)

DATASET="$OUT/dataset.npz"
MODEL="$OUT/model.pt"
PREDICTION="$OUT/prediction"
SUMMARY="$OUT/summary.json"

TEST_START=2019-01-01          # the held-out year (the demo has 2017-2019)
VAL_START=2018-10-01
TRAIN_LOG="$OUT/training_log.jsonl"

# Each function prints one NAME=value per line (a NAME repeated = a list value);
# $REGION/demo.json (see ismoe_qgis/data/demo.py) lists the factors, their layers and the target.
factor_layers() {
    "$PY" - "$REGION/demo.json" "$REGION" <<'EOF'
import json, os, sys
man = json.load(open(sys.argv[1]))
for factor, variables in man["factors"].items():
    for v in variables:
        print("FACTORS=%s" % os.path.join(sys.argv[2], man["layers"][v]))
print("FACTOR_GROUPS=%s" % ";".join("%s=%s" % (f, ",".join(vs)) for f, vs in man["factors"].items()))
EOF
}

prepare_params() {
    factor_layers
    echo "TARGET=$REGION/soil_moisture.tif"
    echo "PATCH_SIZE=7"
    echo "SEQ_LEN=14"
    echo "OUTPUT=$DATASET"
}

train_params() {
    echo "DATASET=$DATASET"
    echo "MODEL=0"
    echo "DEVICE=0"
    echo "EPOCHS=${EPOCHS:-10}"
    echo "SAMPLES_PER_EPOCH=${SAMPLES_PER_EPOCH:-8192}"
    echo "SEED=42"
    echo "VAL_START=$VAL_START"
    echo "TEST_START=$TEST_START"
    echo "OUTPUT=$MODEL"
    echo "LOG=$TRAIN_LOG"
}

predict_params() {
    factor_layers | grep -v '^FACTOR_GROUPS='
    echo "MODEL_FILE=$MODEL"
    echo "DATE_FROM=$TEST_START"
    echo "OUTPUT=$PREDICTION"
}

summary_args() {
    echo "--region"; echo "$REGION"
    echo "--prediction"; echo "$PREDICTION"
    echo "--test-start"; echo "$TEST_START"
    echo "--out"; echo "$SUMMARY"
}
# ======================================================================================

die() { echo "demo: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no virtual environment at $ISMOE_ROOT/.venv: run 'make install' first"
"$PY" -c 'import torch' 2>/dev/null || die "torch is not importable from $PY: run 'make install' first"
command -v "$QGIS_PROCESS" >/dev/null 2>&1 || die "qgis_process not found ($QGIS_PROCESS): run 'make install' first"

# The plugin must be enabled in the QGIS profile qgis_process uses (make install does it).
if ! "$QGIS_PROCESS" plugins 2>/dev/null | grep -qE '^\* ismoe_qgis\s*$'; then
    "$QGIS_PROCESS" plugins enable ismoe_qgis >/dev/null 2>&1 || die "cannot enable the ismoe_qgis plugin"
fi

mkdir -p "$OUT" "$LOGS"
T0=$SECONDS
declare -A STEP_SECONDS=()

# run_step NAME CMD...: runs CMD, log in $LOGS/NAME.log, fails the demo on error
run_step() {
    local name=$1; shift
    local t=$SECONDS
    echo "== $name"
    set +e
    "$@" 2>&1 | grep --line-buffered -v -e 'XDG_RUNTIME_DIR' -e 'setapi() is deprecated' \
        | tee "$LOGS/$name.log"
    local -a status=("${PIPESTATUS[@]}")
    set -e
    local rc=${status[0]}
    STEP_SECONDS[$name]=$((SECONDS - t))
    [ "$rc" -eq 0 ] || die "step '$name' failed (exit $rc); log: $LOGS/$name.log"
}

# run_alg STEP ALG PARAM_FUNCTION: qgis_process run ALG -- NAME=value ...
run_alg() {
    local step=$1 alg=$2 fn=$3
    local -a params=()
    mapfile -t params < <("$fn")
    [ "${#params[@]}" -gt 0 ] || die "no parameters for $alg"
    run_step "$step" "$QGIS_PROCESS" run "$alg" -- "${params[@]}"
}

run_step region "$PY" -m ismoe_qgis.data.demo --out "$REGION" "${DEMO_ARGS[@]}"
run_alg prepare ismoe:preparedataset prepare_params
run_alg train ismoe:train train_params
run_alg predict ismoe:predict predict_params
mapfile -t SUMMARY_ARGS < <(summary_args)
run_step summary "$PY" -m ismoe_qgis.demo_summary "${SUMMARY_ARGS[@]}"

echo
echo "== outputs in $OUT"
for p in "$REGION" "$DATASET" "$MODEL" "$TRAIN_LOG" "$PREDICTION" "$SUMMARY" "$LOGS"; do
    if [ -e "$p" ]; then echo "   $p"; fi
done
echo "== time: region ${STEP_SECONDS[region]}s, prepare ${STEP_SECONDS[prepare]}s," \
     "train ${STEP_SECONDS[train]}s, predict ${STEP_SECONDS[predict]}s," \
     "summary ${STEP_SECONDS[summary]}s; total $((SECONDS - T0))s"

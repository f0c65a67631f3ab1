#!/usr/bin/env bash
# The GPU checks in one call: on a machine with a CUDA device, from the repository root, in an
# environment where cryoet-forge and its test extras are installed (PYTHON its python, forge on
# PATH), or with the wheels of `prepare.sh` in .whl/ (then installed first into /tmp/site). Runs the
# tests marked `gpu` and the GPU benchmarks, each under its own time limit, so that the whole stays
# inside ten minutes:
#
#   bash benchmarks/device/check.sh          # writes into $OUT (default device-out/)
#
# Outputs: $OUT/steps.jsonl (one line per step: name, exit code, seconds), $OUT/bench.jsonl (the
# benchmarks' own JSON lines, each with its reference measured in the same run), $OUT/device.txt
# (nvidia-smi and torch's view of the device) and $OUT/log.txt (everything printed). A failed step
# does not stop the next; the script exits non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-device-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$OUT/steps.jsonl"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then  # a machine without network access: the wheels of prepare.sh, beside its own packages
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl >> "$LOG" 2>&1 || { echo "installing .whl failed (see $LOG)"; exit 1; }
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
  # the repository root comes first on sys.path: give its package the compiled kernel the wheel holds
  cp /tmp/site/cryoet_forge/_metrics_rs*.so cryoet_forge/
fi
{ nvidia-smi || true; "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'; } > "$OUT/device.txt" 2>&1
failed=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name: $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || failed=1
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start )), \"limit\": $limit}" | tee -a "$OUT/steps.jsonl"
}
BENCH="$OUT/bench.jsonl"
# limits: together under 9 minutes, leaving the installation room inside ten
step tests 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs \
  tests/test_device_paths.py tests/test_sim_gpu.py tests/test_metrics_prdc.py
step train 90 "$PY" benchmarks/train_throughput.py --device cuda --settings quickstart,paper --steps 10 --out "$BENCH"
step simulate 60 "$PY" benchmarks/simulate.py --devices cuda --repeats 2 --baseline-volumes 4 --out "$BENCH"
step simulate-tomogram 45 "$PY" benchmarks/bench_simulate_tomogram.py --size 96,256,256 --devices cuda \
  --out "$BENCH"
step picking 45 "$PY" benchmarks/bench_picking.py --size 96,256,256 --device cuda --out "$BENCH"
# the quickstart's whole evaluation with the GAN and the classifiers on the GPU (its CPU time on a
# 2-core machine is in docs/results.md); its results.json and report.md are copied into $OUT
rm -rf /tmp/quickstart
step quickstart 150 forge evaluate --config configs/evaluate-quickstart.toml --out /tmp/quickstart --quiet \
  --set gan.overrides.train.device=cuda --set classifier.device=cuda
cp /tmp/quickstart/results.json "$OUT/quickstart-results.json" 2>/dev/null
cp /tmp/quickstart/report.md "$OUT/quickstart-report.md" 2>/dev/null
tail -n 5 "$LOG"
cat "$OUT/steps.jsonl"
exit $failed

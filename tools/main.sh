#!/usr/bin/env bash
# The main job: install dependencies, build zsq (Release), then quantize the shipped ResNet-20 teacher to
# W4A4 without any data, twice: Gaussian-noise calibration (the baseline) and ZAQ with the quick budget
# (adversarial generator vs fake-quantized student, < 10 minutes on 2 cores). Both students are then
# evaluated on the Fashion-MNIST test set and the table FP / gaussian / ZAQ is printed with the run
# directory. About 12 minutes on 2 cores from a fresh clone.
#   ZSQ_RUN_DIR  where the runs go (default runs/main-<date>-<time>)
#   ZSQ_THREADS  CPU threads (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
ZSQ_BUILD_TARGET=zsq bash tools/build.sh

teacher=models/pretrained/resnet20.safetensors
run_dir=${ZSQ_RUN_DIR:-runs/main-$(date +%Y%m%d-%H%M%S)}
threads=${ZSQ_THREADS:-0}
mkdir -p "$run_dir"
log="$run_dir/main.log"
echo "zsq main job: runs and logs in $run_dir"

accuracy() {  # FILE -> test accuracy in percent, from `zsq eval --json`
  ./build/zsq eval "$1" --json --threads "$threads" | sed -n 's/.*"accuracy":\([0-9.eE+-]*\).*/\1/p' |
    awk '{ printf "%.2f", 100 * $1 }'
}

echo "[1/4] FP teacher on the test set"
fp=$(accuracy "$teacher")
echo "[2/4] gaussian W4A4 (calibration on 256 N(0,1) images; no data read)"
./build/zsq quantize --teacher "$teacher" --method gaussian --wbits 4 --abits 4 --seed 0 --threads "$threads" \
  --out "$run_dir/gaussian-w4a4" >>"$log" 2>&1
echo "[3/4] ZAQ W4A4, quick budget (no data read; progress in $log)"
./build/zsq quantize --teacher "$teacher" --method zaq --budget quick --wbits 4 --abits 4 --seed 0 \
  --threads "$threads" --out "$run_dir/zaq-w4a4" 2>&1 | tee -a "$log" | grep --line-buffered '^epoch' || true
test -f "$run_dir/zaq-w4a4/student.safetensors" || { echo "ZAQ run failed; see $log" >&2; exit 1; }
echo "[4/4] evaluating both students on the test set"
g=$(accuracy "$run_dir/gaussian-w4a4/student.safetensors")
z=$(accuracy "$run_dir/zaq-w4a4/student.safetensors")

table="$run_dir/results.md"
{
  echo "| model (ResNet-20, Fashion-MNIST test top-1) | accuracy | vs FP |"
  echo "|---|---|---|"
  echo "| FP teacher | $fp% | |"
  echo "| gaussian W4A4 (paper convention) | $g% | $(awk -v a="$g" -v b="$fp" 'BEGIN { printf "%+.2f", a - b }') |"
  echo "| ZAQ W4A4, quick budget | $z% | $(awk -v a="$z" -v b="$fp" 'BEGIN { printf "%+.2f", a - b }') |"
} >"$table"
echo
cat "$table"
echo
echo "run directory: $run_dir (reports: */report.md, ZAQ sample grids: zaq-w4a4/samples/)"

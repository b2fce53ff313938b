#!/usr/bin/env bash
# `--device cuda` end to end, next to the same command on the CPU with the same seed (called by
# tools/gpu-check.sh run; usable alone): eval of the shipped teacher, a short teacher training, and
# `zsq quantize` with every method at W4A4 (gaussian, zeroq, gznq, and gdfq/zaq with the quick budget on
# the GPU; their CPU figures with the same seed are in docs/results.md), each student evaluated on
# both devices.
#   bash tools/gpu-cli-check.sh ZSQ_BINARY FASHION_MNIST_DIR OUT_DIR
set -uo pipefail
zsq="$1" data="$2" out="$3"
teacher=models/pretrained/resnet20.safetensors
runs="$out/cli" && mkdir -p "$runs" && rm -f "$runs/failed"
failed=0
note() { echo "cli: $*"; }
acc() { python3 -c 'import json,sys; print("%.2f" % (100 * json.load(open(sys.argv[1]))["accuracy"]))' "$1"; }
timed() {  # timed NAME command...: runs, logs to $runs/NAME.log, prints seconds
  local name="$1"
  shift
  local t0=$(date +%s.%N)
  if ! "$@" >"$runs/$name.log" 2>&1; then
    # Called as s=$(timed ...): the note must go to stderr and the failure to a file, or the command
    # substitution's subshell would swallow both (a failed gdfq run once read as "all steps passed").
    note "$name FAILED: $(tail -2 "$runs/$name.log" | tr '\n' ' ')" >&2
    touch "$runs/failed"
    return 1
  fi
  python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)"
}

if [ -f "$data/t10k-images-idx3-ubyte.gz" ]; then
  for dev in cpu cuda; do
    s=$(timed "eval_teacher_$dev" "$zsq" eval "$teacher" --data "$data" --device $dev --json) &&
      note "eval teacher --device $dev: $(python3 -c 'import json,sys; j=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print("%.2f%% %.0f img/s" % (100*j["accuracy"], j["img_per_s"]))' "$runs/eval_teacher_$dev.log") (${s}s)"
  done
  for dev in cpu cuda; do
    s=$(timed "train_$dev" "$zsq" train --model resnet20 --epochs 1 --limit 10000 --batch 128 --lr 0.1 --seed 0 \
      --data "$data" --device $dev --out "$runs/teacher_$dev.safetensors") &&
      note "train resnet20 1 epoch on 10k images --device $dev: $(grep -o 'test accuracy [0-9.]*%' "$runs/train_$dev.log" | tail -1) (${s}s)"
  done
else
  note "no Fashion-MNIST in $data: eval/train skipped"
fi

quantize() {  # quantize DEVICE METHOD EXTRA...
  local dev="$1" method="$2"
  shift 2
  local dir="$runs/q_${method}_$dev"
  s=$(timed "quantize_${method}_$dev" "$zsq" quantize --teacher "$teacher" --method "$method" --wbits 4 --abits 4 \
    --seed 0 --device "$dev" --out "$dir" "$@") || return
  local line="quantize $method W4A4 --device $dev: ${s}s"
  if [ -f "$data/t10k-images-idx3-ubyte.gz" ]; then
    for edev in cpu cuda; do
      "$zsq" eval "$dir/student.safetensors" --data "$data" --device $edev --json >"$runs/eval_${method}_${dev}_on_$edev.json" 2>"$runs/eval_${method}_${dev}_on_$edev.err" &&
        line="$line, eval on $edev $(python3 -c 'import json,sys; print("%.2f%%" % (100*json.loads(open(sys.argv[1]).read().splitlines()[-1])["accuracy"]))' "$runs/eval_${method}_${dev}_on_$edev.json")" ||
        { line="$line, eval on $edev FAILED"; failed=1; }
    done
  fi
  note "$line"
}
for dev in cpu cuda; do quantize $dev gaussian; done
if [ -f "$data/t10k-images-idx3-ubyte.gz" ] && [ -f "$runs/q_gaussian_cuda/student.safetensors" ]; then
  for dev in cpu cuda; do  # the real-data upper bound (train --student), 100 KD steps
    s=$(timed "train_student_$dev" "$zsq" train --student "$runs/q_gaussian_cuda/student.safetensors" --teacher "$teacher" \
      --steps 100 --batch 128 --seed 0 --data "$data" --device $dev --out "$runs/finetuned_$dev.safetensors") &&
      note "train --student (gaussian W4A4, 100 KD steps on real images) --device $dev: $(grep -o 'test accuracy [0-9.]*%, was [0-9.]*%' "$runs/train_student_$dev.log" | tail -1) (${s}s)"
  done
fi
quantize cuda gdfq --budget quick
quantize cuda zaq --budget quick
for method in zeroq gznq; do
  for dev in cuda cpu; do quantize $dev $method; done
done
[ -e "$runs/failed" ] && failed=1
exit $failed

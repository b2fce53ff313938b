#!/usr/bin/env bash
# Reproduces the baseline table of docs/results.md: W8A8..W3A3 x {gaussian, zeroq} for a teacher.
#   tools/results.sh [TEACHER] [OUT_DIR]
# Each cell is one `zsq quantize` run (no data) followed by `zsq eval --report` (test set).
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:-models/pretrained/resnet20.safetensors}
out=${2:-runs/results}
zsq=./build/zsq
threads=${ZSQ_THREADS:-2}
seed=${ZSQ_SEED:-0}
mkdir -p "$out"
accuracy() { sed -n 's/.*"accuracy":\([0-9.eE+-]*\).*/\1/p'; }
fp=$($zsq eval "$teacher" --json --threads "$threads" | accuracy)
table="$out/table.md"
{
  echo "Teacher: \`$teacher\` (FP test accuracy $(awk -v a="$fp" 'BEGIN{printf "%.2f", 100*a}')%), seed $seed, $threads threads, paper convention."
  echo
  echo "| method | W8A8 | W6A6 | W5A5 | W4A4 | W3A3 |"
  echo "|---|---|---|---|---|---|"
} > "$table"
for method in gaussian zeroq; do
  row="| $method |"
  for bits in 8 6 5 4 3; do
    run="$out/${method}_w${bits}a${bits}"
    $zsq quantize --teacher "$teacher" --method "$method" --wbits "$bits" --abits "$bits" --out "$run" \
      --seed "$seed" --threads "$threads" > "$run.log" 2>&1
    acc=$($zsq eval "$run/student.safetensors" --report "$run" --json --threads "$threads" | accuracy)
    cell=$(awk -v a="$acc" -v f="$fp" 'BEGIN{printf "%.2f (%+.2f)", 100*a, 100*(a-f)}')
    echo "$method W${bits}A${bits}: $cell" >&2
    row="$row $cell |"
  done
  echo "$row" >> "$table"
done
cat "$table"

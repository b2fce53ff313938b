#!/usr/bin/env bash
# Reproduces the tables of docs/results.md: bit widths x methods for a teacher.
#   tools/results.sh [TEACHER] [OUT_DIR]
#   ZSQ_METHODS  methods, default "gaussian zeroq" (gdfq, zaq, gznq take ZSQ_BUDGET, default standard)
#   ZSQ_BITS     bit widths, default "8 6 5 4 3"
# Each cell is one `zsq quantize` run (no data) followed by `zsq eval --report` (test set).
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:-models/pretrained/resnet20.safetensors}
out=${2:-runs/results}
zsq=./build/zsq
threads=${ZSQ_THREADS:-2}
seed=${ZSQ_SEED:-0}
methods=${ZSQ_METHODS:-gaussian zeroq}
bits_list=${ZSQ_BITS:-8 6 5 4 3}
budget=${ZSQ_BUDGET:-standard}
mkdir -p "$out"
accuracy() { sed -n 's/.*"accuracy":\([0-9.eE+-]*\).*/\1/p'; }
fp=$($zsq eval "$teacher" --json --threads "$threads" | accuracy)
table="$out/table.md"
{
  echo "Teacher: \`$teacher\` (FP test accuracy $(awk -v a="$fp" 'BEGIN{printf "%.2f", 100*a}')%), seed $seed, $threads threads, paper convention."
  echo
  header="| method |"
  rule="|---|"
  for bits in $bits_list; do header="$header W${bits}A${bits} |"; rule="$rule---|"; done
  echo "$header"
  echo "$rule"
} > "$table"
for method in $methods; do
  extra=()
  label=$method
  case $method in gdfq | zaq | gznq) extra=(--budget "$budget"); label="$method ($budget)" ;; esac
  row="| $label |"
  for bits in $bits_list; do
    run="$out/${method}_w${bits}a${bits}"
    $zsq quantize --teacher "$teacher" --method "$method" --wbits "$bits" --abits "$bits" --out "$run" \
      --seed "$seed" --threads "$threads" "${extra[@]}" > "$run.log" 2>&1
    acc=$($zsq eval "$run/student.safetensors" --report "$run" --json --threads "$threads" | accuracy)
    cell=$(awk -v a="$acc" -v f="$fp" 'BEGIN{printf "%.2f (%+.2f)", 100*a, 100*(a-f)}')
    echo "$method W${bits}A${bits}: $cell" >&2
    row="$row $cell |"
  done
  echo "$row" >> "$table"
done
cat "$table"

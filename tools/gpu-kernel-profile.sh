#!/usr/bin/env bash
# Per-kernel GPU time of one benchmark, summed by kernel name, through Nsight Compute (ncu) on a GPU
# machine: which kernels a zsq step spends its time in.
#   bash tools/gpu-kernel-profile.sh BINARY FILTER [LAUNCHES]   e.g. .../bench_cuda BM_CudaTrainStep/512 3000
# Runs BINARY --benchmark_filter=FILTER for a few iterations with ncu collecting only each kernel's
# duration (kernels are serialized, so the sum is the GPU's busy time, not the step's wall time).
set -euo pipefail
binary="$1" filter="$2" launches="${3:-3000}"
csv=$(mktemp)
ncu --metrics gpu__time_duration.sum --csv --launch-count "$launches" --log-file "$csv" \
  "$binary" --benchmark_filter="$filter" --benchmark_min_time=0.01 --benchmark_repetitions=1 >/dev/null 2>&1 || true
python3 - "$csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
name_i, value_i, unit_i = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
total = collections.Counter(); count = collections.Counter()
scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "ns": 1e-3, "us": 1.0, "ms": 1e3}
for r in rows[1:]:
    us = float(r[value_i].replace(",", "")) * scale.get(r[unit_i], 1.0)
    name = r[name_i][:90]
    total[name] += us; count[name] += 1
all_us = sum(total.values())
print(f"{sum(count.values())} kernels, {all_us / 1e3:.2f} ms of GPU time")
for name, us in total.most_common(25):
    print(f"{us / 1e3:9.3f} ms {100 * us / all_us:5.1f}% {count[name]:6d}x  {name}")
PY

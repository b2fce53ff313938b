#!/usr/bin/env bash
# The CUDA backend's checks in one call on a GPU machine (H100/H200), for machines that have CUDA, cuDNN
# and cuBLAS (here: in /usr/local/cuda and PyTorch's wheel) but cannot install zsq's other dependencies.
#
#   bash tools/gpu-check.sh pack   # here (the dev machine): build with CUDA, bundle binaries + the
#                                  # non-CUDA shared libraries they need + Fashion-MNIST into .gpu/
#   bash tools/gpu-check.sh run    # there (repo root, .gpu/ carried): every CUDA test, the CUDA
#                                  # benchmarks, PyTorch's ResNet-20 step on the same GPU, and
#                                  # train / quantize (every method) / eval with --device cuda vs cpu
#
# With the device tool: run(command="bash tools/gpu-check.sh run", carry=[".gpu"]). Logs and a summary go
# to $OUT (or .gpu/out when $OUT is unset). ZSQ_GPU_CHECK_STEPS limits the run to some steps
# (comma-separated: tests,bench,torch,cli).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
bundle=.gpu

pack() {
  ZSQ_WITH_CUDA=ON bash tools/build.sh
  rm -rf "$bundle" && mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/data"
  cp build/zsq build/tests/test_cuda_* build/bench/bench_cuda* "$bundle/bin/"
  strip "$bundle"/bin/* 2>/dev/null || true
  # Shared libraries the binaries need that a CUDA machine lacks: everything but glibc, the C++
  # runtime and the CUDA libraries (cuBLAS, cuDNN come from the GPU machine itself).
  ldd "$bundle"/bin/* | awk '/=> \// {print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|libcu|libnv' |
    while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
  cp /usr/share/datasets/fashion-mnist/*.gz "$bundle/data/" 2>/dev/null || echo "gpu-check: no Fashion-MNIST here; the cli step will skip train/eval"
  tar -C "$bundle" -cJf "$bundle/bundle.tar.xz" bin lib
  rm -rf "$bundle/bin" "$bundle/lib"
  du -sh "$bundle"
}

# cuDNN and cuBLAS on the GPU machine: the toolkit's folders and PyTorch's wheels (nvidia/*/lib).
cuda_library_path() {
  local dirs=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib)
  local site
  site=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
  for s in $site; do
    for d in "$s"/nvidia/*/lib "$s"/nvidia/cu13/lib "$s"/torch/lib; do [ -d "$d" ] && dirs+=("$d"); done
  done
  local IFS=:
  echo "${dirs[*]}"
}

run_steps() {
  local out="${OUT:-$bundle/out}" work=/tmp/zsq-gpu steps="${ZSQ_GPU_CHECK_STEPS:-tests,bench,torch,cli}"
  mkdir -p "$out" "$work"
  tar -C "$work" -xJf "$bundle/bundle.tar.xz"
  export LD_LIBRARY_PATH="$work/lib:$(cuda_library_path):${LD_LIBRARY_PATH:-}"
  # ZSQ_BINARY_DIR: the tests that drive the zsq binary (test_cuda_cli) find it there.
  export ZSQ_SOURCE_DIR="$PWD" ZSQ_TEACHER="$PWD/models/pretrained/resnet20.safetensors" ZSQ_BINARY_DIR="$work/bin"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
  local summary="$out/summary.txt" failed=0
  : >"$summary"
  if [[ $steps == *tests* ]]; then
    for t in "$work"/bin/test_cuda_*; do
      if "$t" >"$out/$(basename "$t").log" 2>&1; then r=pass; else r=FAIL; failed=1; fi
      grep -q "zsq-cuda-skip" "$out/$(basename "$t").log" && r=SKIPPED
      echo "$(basename "$t"): $r $(tail -3 "$out/$(basename "$t").log" | grep 'test cases' || true)" | tee -a "$summary"
    done
    # One file for all test logs: the device tool brings back at most 8 files.
    for f in "$out"/test_cuda_*.log; do echo "=== $(basename "$f")"; cat "$f"; done >"$out/tests.log" && rm -f "$out"/test_cuda_*.log
  fi
  if [[ $steps == *bench* ]]; then
    for b in "$work"/bin/bench_cuda*; do
      # The depthwise comparison has ~140 cases: fewer, shorter repetitions keep the step in minutes.
      local reps=5 min_time=0.2
      [[ $b == *depthwise* ]] && reps=3 min_time=0.05
      "$b" --benchmark_repetitions=$reps --benchmark_report_aggregates_only=true --benchmark_min_time=$min_time \
        --benchmark_out="$out/$(basename "$b").json" --benchmark_out_format=json >"$out/$(basename "$b").log" 2>&1 ||
        { echo "$(basename "$b"): FAILED" | tee -a "$summary"; failed=1; }
      grep -E "_median" "$out/$(basename "$b").log" | tee -a "$summary" || true
    done
  fi
  if [[ $steps == *torch* ]]; then
    python3 bench/torch_resnet20.py 2>&1 | tee "$out/torch.log" | tail -8 | tee -a "$summary" || failed=1
  fi
  if [[ $steps == *cli* ]]; then
    bash tools/gpu-cli-check.sh "$work/bin/zsq" "$bundle/data" "$out" 2>&1 | tee -a "$summary" || failed=1
  fi
  echo "gpu-check: $([ $failed = 0 ] && echo all steps passed || echo SOME STEPS FAILED)" | tee -a "$summary"
  return $failed
}

case "$mode" in
  pack) pack ;;
  run) run_steps ;;
  *) echo "usage: bash tools/gpu-check.sh pack|run" >&2; exit 2 ;;
esac

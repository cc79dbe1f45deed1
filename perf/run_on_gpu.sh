#!/usr/bin/env bash
# One device call per stage (each well inside the device tool's 10-minute limit), results under $OUT.
#
#   bash perf/run_on_gpu.sh tests          # GPU test suite (compiled kernels + gpu-marked tests), host overhead
#   bash perf/run_on_gpu.sh conversion     # one perf family: conversion | ssm | memory | decode
#   bash perf/run_on_gpu.sh demo           # the end-to-end demo at the GPU size
#   bash perf/run_on_gpu.sh regression     # pytest-benchmark suite, saved as a baseline
#
# Every stage ends with a short table on stdout (the device tool returns the tail) and packs what it wrote
# (plots/<gpu>/, perf/results/<gpu>/, .benchmarks/) into $OUT/<stage>.tgz to commit from the dev machine.
set -uo pipefail
stage=${1:?usage: perf/run_on_gpu.sh tests|conversion|ssm|memory|decode|demo|regression}
out=${OUT:-/tmp/etsc_out}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
case "$stage" in
  tests)
    python -m pytest -q tests -p no:cacheprovider -p no:benchmark -rfE 2>&1 | tee "$out/tests.log" | tail -40
    rc=${PIPESTATUS[0]}
    python -m perf.host_overhead 2>&1 | tee "$out/host_overhead.txt"
    tar czf "$out/$stage.tgz" -C "$out" tests.log host_overhead.txt
    exit "$rc"
    ;;
  conversion|ssm|memory|decode)
    # --budget: no new point after 480 s, so a 600 s remote command still writes its results and plots
    python -m perf --only "$stage" --budget "${PERF_BUDGET_S:-480}" 2>&1 | tee "$out/perf_$stage.log" \
      | grep -v '^\[' | tail -60
    ;;
  demo)
    python -m etsc_triton.demo --json "$out/demo.json" 2>&1 | tee "$out/demo.log" | tail -45
    ;;
  regression)
    python -m pytest -q perf/test_regression.py --benchmark-only --benchmark-save=gpu \
      --benchmark-columns=median,iqr,rounds 2>&1 | tee "$out/regression.log" | tail -25
    ;;
  *)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
rc=${PIPESTATUS[0]}
tar czf "$out/$stage.tgz" $(ls -d plots/*/ perf/results/*/ .benchmarks 2>/dev/null | grep -v -e plots/cpu -e plots/accuracy) 2>/dev/null
exit "$rc"

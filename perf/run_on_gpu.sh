#!/usr/bin/env bash
# The GPU session's runs, several stages per remote command, results under $OUT.
#
#   bash perf/run_on_gpu.sh STAGE [STAGE ...]
#
#   tests          GPU test suite (compiled kernels + gpu-marked tests) in 8 pytest-xdist workers, 300 s per
#                  test at most; then the host time per decode-sized call (perf.host_overhead)
#   demo           the end-to-end demo at the GPU size (writes demo.json)
#   FAMILY[:S]     one perf family (conversion | ssm | memory | decode); no new point after S seconds
#                  (default 240), so the stage ends a few seconds after S with its results and plots
#   regression     the pytest-benchmark suite, saved as a baseline under .benchmarks/
#
# A session has 30 minutes of device time, a machine start included, and one command may run 10 minutes.
# The plan that fits (perf/NOTES.md, "GPU session plan"), one call each, issued back to back (the machine is
# given back after 30 s idle):
#
#   bash perf/run_on_gpu.sh tests demo                  # ~6 min (estimate)
#   bash perf/run_on_gpu.sh conversion:200 ssm:260      # <= 8.5 min
#   bash perf/run_on_gpu.sh memory:300 decode:150       # <= 8.5 min
#   bash perf/run_on_gpu.sh regression                  # ~2 min, if time is left
#
# After every stage, plots/<gpu>/, perf/results/<gpu>/ (one CSV per family) and .benchmarks/ are packed into
# $OUT/results.tgz (so a command stopped at its limit still returns the stages it finished); logs go to
# $OUT/<stage>.log. The exit status is the first failing stage's.
set -uo pipefail
[ $# -ge 1 ] || { sed -n '2,24p' "$0"; exit 2; }
for stage in "$@"; do  # refuse a misspelt stage before any stage spends device time
  [[ $stage =~ ^(tests|demo|regression|(conversion|ssm|memory|decode)(:[0-9]+)?)$ ]] \
    || { echo "unknown stage $stage" >&2; exit 2; }
done
out=${OUT:-/tmp/etsc_out}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

pack() {
  local paths
  paths=$(ls -d plots/*/ perf/results/*/ .benchmarks 2>/dev/null | grep -v -e plots/cpu -e plots/accuracy \
    -e perf/results/accuracy)
  [ -n "$paths" ] && tar czf "$out/results.tgz" $paths
}

run_stage() {
  local stage=$1 started=$SECONDS rc
  case "$stage" in
    tests)
      python -m pytest -q tests -n 8 --timeout 300 -p no:cacheprovider -p no:benchmark -rfE \
        >"$out/tests.log" 2>&1
      rc=$?
      tail -30 "$out/tests.log"
      python -m perf.host_overhead >"$out/host_overhead.log" 2>&1 || [ "$rc" -ne 0 ] || rc=1
      tail -12 "$out/host_overhead.log"
      ;;
    demo)
      python -m etsc_triton.demo --json "$out/demo.json" >"$out/demo.log" 2>&1
      rc=$?
      tail -40 "$out/demo.log"
      ;;
    conversion* | ssm* | memory* | decode*)
      local family=${stage%%:*} budget=240
      [[ $stage == *:* ]] && budget=${stage#*:}
      python -m perf --only "$family" --budget "$budget" >"$out/$family.log" 2>&1
      rc=$?
      grep -v '^\[' "$out/$family.log" | tail -70
      ;;
    regression)
      python -m pytest -q perf/test_regression.py --benchmark-only --benchmark-save=gpu \
        --benchmark-columns=median,iqr,rounds -p no:cacheprovider >"$out/regression.log" 2>&1
      rc=$?
      tail -30 "$out/regression.log"
      ;;
  esac
  pack
  echo "== stage $stage: exit $rc after $((SECONDS - started)) s"
  return "$rc"
}

status=0
for stage in "$@"; do
  run_stage "$stage" || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
done
exit "$status"

#!/usr/bin/env bash
# Cells re-run for the validity fixes (cpu preset, CIFAR-10 JPEG copy, seed 0 unless noted), in two
# lanes of one thread each: smoothing with the majority-vote headline, fine-tuning with its own
# optimisation and the default held-out backbone (both modes), step-matched clean-only baselines of
# partial CUDA poisoning. Finished cells are skipped, so the script resumes where it stopped.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 BENCH_DATA_ROOT="${BENCH_DATA_ROOT:-../shared/data}"
run() { bench run --no-baseline "$@" || echo "FAILED: bench run $*" >&2; }
lane1() {
  run --poison none --defense smoothing
  run --poison cuda --defense smoothing
  run --poison none --defense finetune --defense-param mode=linear   # builds the default backbone once
  run --poison cuda --defense finetune --defense-param mode=linear
  run --poison cuda --defense finetune
  run --poison em --defense smoothing
  run --poison rem --defense smoothing
  for p in em em-classwise; do run --poison $p --defense finetune; run --poison $p --defense finetune --defense-param mode=linear; done
}
lane2() {
  for r in 0.2 0.4 0.6 0.8; do run --poison cuda --ratio $r --clean-only; done
  run --poison cuda --defense smoothing --seed 1
  run --poison em-classwise --defense smoothing
  run --poison none --defense finetune
  run --poison sem --defense smoothing
  for p in rem sem; do run --poison $p --defense finetune; run --poison $p --defense finetune --defense-param mode=linear; done
}
lane1 > "${LOG:-/tmp}/lane1.log" 2>&1 &
lane2 > "${LOG:-/tmp}/lane2.log" 2>&1 &
wait

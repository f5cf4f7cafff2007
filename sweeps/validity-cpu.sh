#!/usr/bin/env bash
# Cells re-run for the validity fixes (cpu preset, CIFAR-10 JPEG copy, seed 0 unless noted), in two
# lanes of one thread each: smoothing with the majority-vote headline, fine-tuning with its own
# optimisation and the default held-out backbone (both modes), step-matched clean-only baselines of
# partial CUDA poisoning. Finished cells are skipped, so the script resumes where it stopped.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 BENCH_DATA_ROOT="${BENCH_DATA_ROOT:-../shared/data}"
CACHE="${BENCH_CACHE_DIR:-$HOME/.cache/unlearnable-bench}"
run() { bench run --no-baseline "$@" || echo "FAILED: bench run $*" >&2; }
ft() { run --poison "$1" --defense finetune --defense-param mode=linear; run --poison "$1" --defense finetune; }
wait_for_backbone() {  # lane B pretrains the default backbone; lane A must not train a second copy
  for _ in $(seq 240); do compgen -G "$CACHE/backbones/cifar10-*-small-cnn-cpu-holdout-*.safetensors" >/dev/null && return; sleep 15; done
}
laneA() {
  run --poison cuda --defense smoothing
  wait_for_backbone
  ft cuda; ft em
  run --poison em --defense smoothing
  run --poison rem --defense smoothing
}
laneB() {
  for r in 0.2 0.4 0.6 0.8; do run --poison cuda --ratio $r --clean-only; done
  ft none                                     # the first finetune cell pretrains the default backbone once
  run --poison cuda --defense smoothing --seed 1
  ft em-classwise; ft rem; ft sem
  run --poison em-classwise --defense smoothing
  run --poison sem --defense smoothing
}
# bash sweeps/validity-cpu.sh        both lanes; "A" or "B": one lane only
case "${1:-both}" in
  A) laneA ;;
  B) laneB ;;
  *) laneA > "${LOG:-/tmp}/laneA.log" 2>&1 & laneB > "${LOG:-/tmp}/laneB.log" 2>&1 & wait ;;
esac

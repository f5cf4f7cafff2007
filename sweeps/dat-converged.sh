#!/usr/bin/env bash
# DAT at a budget where it converges (issue: at the cpu preset's 15 epochs DAT is still climbing):
# the cpu preset with 40 epochs, for DAT (default and official BN variant) and for plain training, on
# clean data and on CUDA, seed 0: a second table of the same protocol for every defense compared.
# About 2 h of one core per DAT cell on a 2-core machine; finished cells are skipped, so it resumes.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 BENCH_DATA_ROOT="${BENCH_DATA_ROOT:-../shared/data}"
bench sweep --poisons cuda --defenses none,dat --protocol-param epochs=40 --seeds 0 --jobs 2
bench sweep --poisons cuda --defenses dat --defense-param dat.official_bn_update=true --protocol-param epochs=40 \
  --seeds 0 --jobs 2

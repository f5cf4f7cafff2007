#!/usr/bin/env bash
# secure-release's standard-tier row at the cpu preset (issue 35), one lane of one thread, cheapest cells
# first (the audit's plan estimates), so that an interrupted lane leaves the most cells. Finished cells are
# skipped: it resumes where it stopped. `bench audit --poison secure-release --suite standard --preset cpu
# --results results/runs` then reuses every record and writes the verdict.
set -u
cd "$(dirname "$0")/.."
export BENCH_DATA_ROOT="${BENCH_DATA_ROOT:-../shared/data}"
for d in finetune median-filter bit-depth cutout cutmix mixup gaussian-blur random-blur rsk-ff ortho-proj \
         dp-instahide poison-aware-at smoothing at ueraser dat; do
  bench sweep --poisons secure-release --defenses "$d" --seeds 0 --preset cpu
done

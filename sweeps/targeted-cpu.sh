#!/usr/bin/env bash
# The targeted track at the cpu preset (issue 35): Witches' Brew trials (a trial = a seed: its key draws the
# target, the adversarial class and the poison images) under plain training, CutMix, mixup and DP-InstaHide,
# seed-major so every defense gains trials evenly; then MetaPoison on the same trials (paired: same key,
# same target, same images, same surrogate) under plain training. One lane of one thread; finished cells are
# skipped and an interrupted run resumes from its last epoch, so re-running this file does only what is
# missing. Usage: bash sweeps/targeted-cpu.sh [FIRST LAST [MP_FIRST MP_LAST]]: Witches' Brew seeds FIRST..LAST
# (default 0..9), MetaPoison seeds MP_FIRST..MP_LAST (default the same); two lanes take disjoint ranges. Then:
# bench leaderboard
set -u
cd "$(dirname "$0")/.."
export BENCH_DATA_ROOT="${BENCH_DATA_ROOT:-../shared/data}"
first="${1:-0}"
last="${2:-9}"
mp_first="${3:-$first}"
mp_last="${4:-$last}"
for seed in $(seq "$first" "$last"); do
  bench sweep --poisons witches-brew --defenses none,cutmix,mixup,dp-instahide --seeds "$seed" --preset cpu \
    --no-clean-row
done
for seed in $(seq "$mp_first" "$mp_last"); do
  bench sweep --poisons metapoison --defenses none --seeds "$seed" --preset cpu --no-clean-row
done

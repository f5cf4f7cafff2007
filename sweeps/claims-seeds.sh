#!/usr/bin/env bash
# Cells the claims and worst cases need (issue 29), in priority order, one `bench run` at a time (cpu preset):
# 1. grayscale with a grayscale test set too (test=true), the setting of the CUDA paper's 20.12 % and REM's
#    70.76 %; 2. extra seeds WITH fresh poison instances (no --key: seed s draws key s) for the claim cells
#    nearest their thresholds (within 2 margins under the claims of version 4), then the best defense of
#    every poison (a worst case needs >= 3 seeds), then the cells whose claims are inconclusive on this
#    preset (their poisons' reduced recipes) but whose seeds measure poison-instance noise.
# Each line skips a cell whose record exists, and an interrupted run resumes from its last epoch, so
# re-running this file only does what is missing.
# Usage: bash sweeps/claims-seeds.sh [--data-root DIR] [--results DIR]   (then: bench claims; bench leaderboard)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- --data-root ../shared/data
ARGS=("$@")
run() {  # run POISON DEFENSE SEED [DEFENSE-PARAM | --flag ...]
  local poison=$1 defense=$2 seed=$3; shift 3
  local extra=()
  for p in "$@"; do
    if [[ $p == --* ]]; then extra+=("$p"); else extra+=(--defense-param "$p"); fi
  done
  bench run --preset cpu --no-baseline --poison "$poison" --defense "$defense" --seed "$seed" "${extra[@]}" "${ARGS[@]}"
}
# 1. grayscale train + test images: clean reference and CUDA (REM below: its generation is long)
run none grayscale 0 test=true
run cuda grayscale 0 test=true
# 2. claim cells within 2 margins of their thresholds (rsk-ff-cuda, ops-jpeg, lsp-jpeg, cuda-partial at 60 %)
run cuda rsk-ff 3
run ops jpeg 1
run lsp jpeg 3
run cuda rsk-ff 4
run ops jpeg 2
run lsp jpeg 4
run cuda none 1 --ratio 0.6
run cuda none 1 --ratio 0.6 --clean-only
# 3. the best defense of every poison to 3 seeds, and the grayscale claims' cells
run ar jpeg 1
run ar jpeg 2
run lsp ortho-proj 1
run lsp ortho-proj 2
run ops ortho-proj 1
run ops ortho-proj 2
run lsp grayscale 1
run lsp grayscale 2
run rem grayscale 0 test=true
run cuda grayscale 1 test=true
run none grayscale 1 test=true
run em-classwise ortho-proj 1
run em-classwise ortho-proj 2
run tap jpeg 3
run tap jpeg 4
run em jpeg 3
run em jpeg 4
run sem grayscale 1
run sem grayscale 2
run rem grayscale 1
run rem grayscale 2
run cuda none 2 --ratio 0.6
run cuda none 2 --ratio 0.6 --clean-only
run cuda smoothing 3
run cuda smoothing 4

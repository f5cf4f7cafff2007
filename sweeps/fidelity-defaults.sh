#!/usr/bin/env bash
# Re-runs after the defaults moved to the official code (issue 30, "Defaults"), cpu preset, seed 0, one
# lane of one thread, most telling cells first: ortho-proj's official x - QQ^T x on the columns where it
# is the best defense (class-wise EM, OPS, LSP) and clean; RSK+FF filtering before the crop; DP-InstaHide
# with forest's clamped noise; AR with the official coefficient set, alone and under JPEG/grayscale;
# smoothing's PREDICT on CUDA. The records of the earlier defaults keep their run ids (labelled
# `center=True`, `noise_clamp=False`, `order=crop-filter`, `coefficients=key`). Finished cells are skipped,
# so it resumes where it stopped.
set -u
cd "$(dirname "$0")/.."
export BENCH_DATA_ROOT="${BENCH_DATA_ROOT:-../shared/data}"
bench sweep --poisons em-classwise --defenses ortho-proj --no-clean-row --seeds 0
bench sweep --poisons ops --defenses ortho-proj --no-clean-row --seeds 0
bench sweep --poisons lsp --defenses ortho-proj --no-clean-row --seeds 0
bench sweep --poisons none --defenses ortho-proj --seeds 0
bench sweep --poisons none --defenses rsk-ff --seeds 0
bench sweep --poisons cuda --defenses rsk-ff --no-clean-row --seeds 0
bench sweep --poisons ops --defenses rsk-ff --no-clean-row --seeds 0
bench sweep --poisons lsp --defenses rsk-ff --no-clean-row --seeds 0
bench sweep --poisons ar --defenses rsk-ff --no-clean-row --seeds 0 --poison-param ar.coefficients=key
bench sweep --poisons none --defenses dp-instahide --seeds 0
bench sweep --poisons cuda --defenses dp-instahide --no-clean-row --seeds 0
bench sweep --poisons ops --defenses dp-instahide --no-clean-row --seeds 0
bench sweep --poisons lsp --defenses dp-instahide --no-clean-row --seeds 0
bench sweep --poisons ar --defenses none --no-clean-row --seeds 0
bench sweep --poisons ar --defenses jpeg --defense-param jpeg.quality=10 --no-clean-row --seeds 0
bench sweep --poisons ar --defenses grayscale --no-clean-row --seeds 0
bench sweep --poisons ar --defenses rsk-ff,ortho-proj --no-clean-row --seeds 0
bench sweep --poisons em-classwise,ops,lsp --defenses ortho-proj --defense-param ortho-proj.center=true --no-clean-row --seeds 1,2
bench sweep --poisons em-classwise,ops,lsp --defenses ortho-proj --no-clean-row --seeds 1,2
bench sweep --poisons em,rem,sem,tap,random-noise,ar --defenses ortho-proj,rsk-ff,dp-instahide --no-clean-row --seeds 0

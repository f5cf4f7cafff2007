#!/usr/bin/env bash
# Records for the poisons and defenses added after the first leaderboard (cpu preset, seed 0, two lanes
# of one thread): the new defenses against every generated poison plus clean data, and the shortcut
# poisons (AR, LSP, OPS) and TAP against plain training, the cheap defenses, smoothing and AT (L-inf 4/255;
# L2 0.5 for the L2-bounded AR and LSP), and the random-noise control under them. Finished cells are
# skipped, so it resumes where it stopped.
set -u
cd "$(dirname "$0")/.."
export BENCH_DATA_ROOT="${BENCH_DATA_ROOT:-../shared/data}"
POISONS=none,cuda,em,em-classwise,rem,sem,random-noise,ar,lsp,ops,tap
bench sweep --poisons "$POISONS" --defenses early-stop,ortho-proj,rsk-ff,dp-instahide --seeds 0 --jobs 2
bench sweep --poisons ar,lsp,ops,tap --defenses none,mixup,cutmix,cutout,jpeg,grayscale,bit-depth,median-filter,gaussian-blur,random-blur,smoothing --seeds 0 --jobs 2
bench sweep --poisons ar,lsp,ops,tap --defenses at --defense-param at.eps=4/255 --seeds 0 --jobs 2
bench sweep --poisons ar,lsp --defenses at --defense-param at.norm=l2 --defense-param at.eps=0.5 --seeds 0 --jobs 2
# the random-noise control under the cheap defenses, smoothing and L-inf AT (a control: it should cost no accuracy under any of them)
bench sweep --poisons random-noise --defenses cutout,mixup,cutmix,jpeg,grayscale,bit-depth,median-filter,gaussian-blur,random-blur,smoothing --no-clean-row --seeds 0 --jobs 2
bench sweep --poisons random-noise --defenses at --defense-param at.eps=4/255 --no-clean-row --seeds 0 --jobs 2
bench sweep --poisons "$POISONS" --defenses ueraser,poison-aware-at --seeds 0 --jobs 2   # 3-5x plain training each

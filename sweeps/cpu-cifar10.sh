#!/usr/bin/env bash
# The sweeps behind the committed leaderboard.md (cpu preset, CIFAR-10 offline JPEG copy, 2 CPU cores).
# Each command skips cells whose records already exist, so re-running this file only does what is missing.
# Usage: bash sweeps/cpu-cifar10.sh [--data-root DIR] [--results DIR]   (then: bench leaderboard)
# Every sweep also runs the clean (--poison none) row of each defense it names.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- --data-root ../shared/data
B=(bench sweep --preset cpu "$@")
BB=backbones/small-cnn-cifar10-holdout.safetensors
POISONS=cuda,em,em-classwise,rem,sem
# defenses that cost about one plain training run each
CHEAP=none,mixup,cutmix,cutout,grayscale,jpeg,bit-depth,gaussian-blur,median-filter,random-blur,smoothing

# 1. every poison without defense (random noise is the control that should not work)
"${B[@]}" --poisons $POISONS,random-noise --defenses none --seeds 0 --jobs 2
# 2. every poison against the cheap defenses; the CUDA row with a second seed (the clean row's second
#    seed only without defense: --no-clean-row leaves out the clean cells of the other defenses)
"${B[@]}" --poisons $POISONS --defenses $CHEAP --seeds 0 --jobs 2
"${B[@]}" --poisons cuda --defenses none --seeds 1 --jobs 2
"${B[@]}" --poisons cuda --defenses ${CHEAP#none,} --seeds 1 --no-clean-row --jobs 2
# 3. partial poisoning (CUDA Table 5): a fraction of the images poisoned, and the clean-only baseline
"${B[@]}" --poisons cuda --defenses none --ratios 0.2,0.4,0.6,0.8 --seeds 0 --jobs 2
# 4. fine-tuning a backbone pretrained on the 30k CIFAR-10 images outside the victim subset
[ -f "$BB" ] || bench pretrain --dataset cifar10 --model small-cnn --split holdout --preset cpu "$@" --out "$BB"
for mode in linear full; do
  "${B[@]}" --poisons $POISONS --defenses finetune --defense-param backbone=$BB --defense-param mode=$mode --seeds 0 --jobs 2
done
# 5. training-time defenses that cost ~10x a plain run: PGD adversarial training and CUDA's adaptive DAT
"${B[@]}" --poisons cuda,rem --defenses at --defense-param at.eps=4/255 --seeds 0 --jobs 2
"${B[@]}" --poisons cuda --defenses at --defense-param at.eps=8/255 --seeds 0 --jobs 2
"${B[@]}" --poisons cuda --defenses at --defense-param at.norm=l2 --defense-param at.eps=0.5 --seeds 0 --jobs 2
"${B[@]}" --poisons cuda --defenses dat --seeds 0 --jobs 2
# DAT as the official code runs it: its attack forwards also update BatchNorm's running statistics
"${B[@]}" --poisons cuda --defenses dat --defense-param dat.official_bn_update=true --seeds 0 --jobs 2
# 6. AT at L-inf 4/255 against the rest of the EM family (about 45 min per cell on one core)
"${B[@]}" --poisons em,em-classwise,sem --defenses at --defense-param at.eps=4/255 --seeds 0 --jobs 2

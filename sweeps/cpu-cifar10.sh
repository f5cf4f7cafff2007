#!/usr/bin/env bash
# The sweeps behind the committed leaderboard.md (cpu preset, CIFAR-10 offline JPEG copy, 2 CPU cores).
# Each command skips cells whose records already exist, so re-running this file only does what is missing.
# Usage: bash sweeps/cpu-cifar10.sh [--data-root DIR]   (then: bench leaderboard)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- --data-root ../shared/data
DATA=("$@")
B=(bench sweep --preset cpu "${DATA[@]}")
BB=backbones/small-cnn-cifar10-holdout.safetensors

"${B[@]}" --poisons cuda,em,rem,sem,random-noise --defenses none --seeds 0
"${B[@]}" --poisons cuda --defenses none --seeds 1
"${B[@]}" --poisons cuda --defenses mixup,cutmix,cutout,grayscale,jpeg,bit-depth,random-blur,smoothing --seeds 0 --jobs 2
"${B[@]}" --poisons cuda --defenses at,dat --defense-param at.eps=4/255 --seeds 0 --jobs 2
"${B[@]}" --poisons cuda --defenses at --defense-param at.eps=8/255 --seeds 0 --jobs 2
"${B[@]}" --poisons cuda --defenses at --defense-param at.norm=l2 --defense-param at.eps=0.5 --seeds 0 --jobs 2
[ -f "$BB" ] || bench pretrain --dataset cifar10 --model small-cnn --split holdout --preset cpu "${DATA[@]}" --out "$BB"
"${B[@]}" --poisons cuda --defenses finetune --defense-param backbone=$BB --defense-param mode=linear --seeds 0 --jobs 2
"${B[@]}" --poisons cuda --defenses finetune --defense-param backbone=$BB --defense-param mode=full --seeds 0 --jobs 2

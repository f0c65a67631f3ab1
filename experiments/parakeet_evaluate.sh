#!/usr/bin/env bash
# forge evaluate on parakeet_dev (an independent simulator's tomograms): train on TS_01, test on TS_02.
#
#   bash experiments/parakeet_evaluate.sh [WORK] [DATA]
#
# WORK (default experiments/work/parakeet) receives the boxes cut by forge extract and the
# evaluation (WORK/evaluation: report.md, results.json); DATA is the parakeet_dev folder (default
# ../shared/data/parakeet_dev beside the repository). The traditional simulation is given what a
# user of that data set knows: 10 A voxels, 300 kV, 4 um underfocus, +-60 deg in 3 deg steps,
# 200 e/A^2, a 600 A ice slab. The GAN and classifier settings are the quickstart's at 32^3;
# `configs/evaluate-parakeet-dev.toml` holds them. Reruns resume finished stages.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$here/experiments/work/parakeet}"
data="${2:-$here/../shared/data/parakeet_dev}"
mkdir -p "$work"
for split in train:TS_01 test:TS_02; do
    name="${split%%:*}" tomo="${split#*:}"
    if [ ! -f "$work/$name/particles.star" ]; then
        forge extract --quiet --picks "$data/particles.csv" --unit px --tomograms "$data" --tomo-name "$tomo" \
            --box 32 --out "$work/$name"
    fi
done
resume=()
[ -d "$work/evaluation/stages" ] && resume=(--resume)
cd "$work"
forge evaluate --config "$here/configs/evaluate-parakeet-dev.toml" --out evaluation "${resume[@]}"

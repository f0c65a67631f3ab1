#!/usr/bin/env bash
# Picking on parakeet_dev (train TS_01, test TS_02): pickers trained on the real training
# tomogram (the ceiling) and on traditional synthetic tomograms of the same four structures
# (forge simulate-tomogram at the domain's acquisition), scored by F-beta (beta 4).
#
#   bash experiments/picking_parakeet.sh high_snr     # the 3000 e/A^2 tomograms
#   bash experiments/picking_parakeet.sh low_dose     # the 200 e/A^2 ones
#
# With GAN=1 a GAN is trained first from random crops of the synthetic tomograms (domain D) to
# random crops of the real training tomogram (domain S: no picks used), the synthetic tomograms are
# refined by it (forge refine-tomogram) and the refined ones are a third source. With GAN=1
# GAN_DATA=boxes the GAN learns from boxes cut at the particles instead (forge extract: the
# synthetic tomograms' picks for domain D, the real training tomogram's labelled picks for domain S,
# the same labels the real-trained ceiling uses); its work goes to gan-boxes/, refined-boxes/ and
# evaluation-boxes/, which reuses the real and traditional pickers of evaluation/ (--resume).
#
# Work in experiments/work/picking/DOMAIN (not committed); the summary is appended to
# experiments/results/picking_parakeet.jsonl. SEEDS, STEPS (picker) and GAN_STEPS may be set in
# the environment. LOWPASS=A gives every picker (real, traditional, GAN) the option lowpass_A=A
# (a low-pass before z-scoring); its evaluations go to evaluation-lpA/ and evaluation-boxes-lpA/.
set -euo pipefail
cd "$(dirname "$0")/.."
DOMAIN=${1:?usage: picking_parakeet.sh high_snr|low_dose}
DATA=${DATA:-../shared/data/parakeet_dev}
SEEDS=${SEEDS:-0,1,2}
STEPS=${STEPS:-300}
case "$DOMAIN" in
  high_snr) TOMOGRAMS="$DATA/high_snr"; DOSE=3000 ;;
  low_dose) TOMOGRAMS="$DATA"; DOSE=200 ;;
  *) echo "unknown domain $DOMAIN" >&2; exit 2 ;;
esac
WORK=experiments/work/picking/$DOMAIN
mkdir -p "$WORK"
S=$DATA/../structures
if [ ! -f "$WORK/synthetic/particles.star" ]; then
  .venv/bin/forge simulate-tomogram --structures "$S/3cf3.pdb.gz,$S/2cg9.pdb.gz,$S/1u6g.pdb.gz,$S/3d2f.pdb.gz" \
    --assembly 1 --voxel-size 10 --size 110,280,280 --ice-thickness 600 --n-per-class 50 --dose "$DOSE" --defocus 4 \
    --voltage 300 --tilt-range -60,60 --tilt-step 3 --n-tomograms 2 --seed 0 --out "$WORK/synthetic"
fi
start=$(date +%s)
REFINED=()
LP=${LOWPASS:+-lp$LOWPASS}
EVAL=evaluation$LP
PICKER_OPTIONS=(--option steps="$STEPS")
[ -z "${LOWPASS:-}" ] || PICKER_OPTIONS+=(--option lowpass_A="$LOWPASS")
if [ "${GAN:-0}" = 1 ]; then
  GAN_STEPS=${GAN_STEPS:-600}
  if [ "${GAN_DATA:-crops}" = boxes ]; then
    RUN=$WORK/gan-boxes; OUT_REFINED=$WORK/refined-boxes; EVAL=evaluation-boxes$LP
    [ -f "$WORK/boxes/real/particles.star" ] || .venv/bin/forge extract --picks "$DATA/particles.csv" --unit px \
      --tomograms "$TOMOGRAMS/TS_01.mrc" --tomo-name TS_01 --box 32 --out "$WORK/boxes/real"
    [ -f "$WORK/boxes/synthetic/particles.star" ] || .venv/bin/forge extract --picks "$WORK/synthetic/particles.star" \
      --tomograms "$WORK/synthetic/tomograms" --box 32 --out "$WORK/boxes/synthetic"
    DOMAINS=(--set 'data.density.dataset="volume-folder"' --set "data.density.options={root='$WORK/boxes/synthetic/particles.star'}"
             --set 'data.subtomograms.dataset="volume-folder"' --set "data.subtomograms.options={root='$WORK/boxes/real/particles.star'}")
    if [ -d "$WORK/evaluation$LP/stages" ] && [ ! -d "$WORK/$EVAL/stages" ]; then
      mkdir -p "$WORK/$EVAL/stages" && cp -r "$WORK/evaluation$LP"/stages/picker-real-* "$WORK/evaluation$LP"/stages/picker-traditional-* "$WORK/$EVAL/stages/" || true
    fi
  else
    RUN=$WORK/gan; OUT_REFINED=$WORK/refined
    DOMAINS=(--set "data.density.options={root='$WORK/synthetic/tomograms', box=32, length=4000, seed=1, z_margin=25}"
             --set "data.subtomograms.options={root='$TOMOGRAMS/TS_01.mrc', box=32, length=4000, seed=2}")
  fi
  if [ ! -d "$RUN/checkpoints/step-$(printf %08d "$GAN_STEPS")" ]; then
    if [ -d "$RUN/checkpoints" ]; then  # an interrupted run continues
      .venv/bin/forge train --resume "$RUN" --steps "$GAN_STEPS"
    else
      .venv/bin/forge train --config experiments/picking_gan.toml --out "$RUN" "${DOMAINS[@]}" --set "train.steps=$GAN_STEPS"
    fi
  fi
  if [ ! -f "$OUT_REFINED/TS_02.mrc" ]; then
    .venv/bin/forge refine-tomogram --run "$RUN" --tomogram "$WORK/synthetic/tomograms/TS_01.mrc" \
      --tomogram "$WORK/synthetic/tomograms/TS_02.mrc" --tile 64 --overlap 16 --out "$OUT_REFINED" --overwrite
  fi
  REFINED=(--refined "$OUT_REFINED")
fi
.venv/bin/forge evaluate-picking --picks "$DATA/particles.csv" --unit px --tomograms "$TOMOGRAMS" \
  --train TS_01 --test TS_02 --radius-column radius_A --synthetic "$WORK/synthetic" "${REFINED[@]}" \
  "${PICKER_OPTIONS[@]}" --seeds "$SEEDS" --out "$WORK/$EVAL" --resume
.venv/bin/python - "$WORK/$EVAL/results.json" "$DOMAIN" "$(( $(date +%s) - start ))" "${GAN_DATA:-crops}" <<'PY' >> experiments/results/picking_parakeet.jsonl
import json, subprocess, sys
r = json.load(open(sys.argv[1]))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"domain": sys.argv[2], "commit": commit, "gan": "gan" in r["sources"], "gan_data": sys.argv[4], "seconds": int(sys.argv[3]), "seeds": r["seeds"],
                  "picker": r["picker"], "picker_options": r["picker_options"], "verdict": r["verdict"],
                  "sources": {k: {"mean": v["mean"], "ci": [v["ci_low"], v["ci_high"]], "fbeta": v["fbeta"],
                                  "classes": v["runs"][0]["classes"]} for k, v in r["sources"].items()}}))
PY
tail -1 experiments/results/picking_parakeet.jsonl

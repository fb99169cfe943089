#!/bin/bash
# Behaviour check for a refactor: the README main job and shortened segmentation / CLIP / LM preset runs with the code
# of the checkout REPO, each run's metrics.jsonl under OUT/<run>/. Run it at the commit before and after a change and
# compare with `python benchmarks/compare_metrics.py BEFORE AFTER main seg clip lm` (every field but wall time must be
# bit-identical: same machine, same thread count).
#   bash benchmarks/same_metrics.sh REPO OUT            the four runs
#   bash benchmarks/same_metrics.sh REPO OUT partial    main job to step 1000, LM to step 60 (interrupted runs)
#   bash benchmarks/same_metrics.sh REPO OUT resume     finishes those runs from their last/ (e.g. with newer code)
set -e
REPO=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd); MODE=${3:-}
cd "$REPO"
export PYTHONPATH=$REPO OMP_NUM_THREADS=2
V="python -m vitlab train"
SEG="steps=30 eval_interval=15 train_subset=640 eval_subset=64 log_every=5"
CLIP="steps=30 eval_interval=15 train_subset=2048 eval_subset=512 log_every=5"
LM="steps=120 eval_interval=40 eval_batches=4 log_every=10"
if [ "$MODE" = partial ]; then
  $V fashion_mnist_vit_mimetic out_dir=$OUT/main_resume max_steps=1000 > $OUT/main_resume.log 2>&1
  $V shakespeare_char_gpt $LM max_steps=60 out_dir=$OUT/lm_resume > $OUT/lm_resume.log 2>&1
elif [ "$MODE" = resume ]; then
  $V fashion_mnist_vit_mimetic out_dir=$OUT/main_resume >> $OUT/main_resume.log 2>&1
  $V shakespeare_char_gpt $LM out_dir=$OUT/lm_resume >> $OUT/lm_resume.log 2>&1
else
  $V fashion_mnist_vit_mimetic download=true out_dir=$OUT/main > $OUT/main.log 2>&1
  $V fashion_scenes_vit_linear $SEG out_dir=$OUT/seg > $OUT/seg.log 2>&1
  $V fashion_mnist_clip_crate_alpha $CLIP out_dir=$OUT/clip > $OUT/clip.log 2>&1
  $V shakespeare_char_gpt $LM out_dir=$OUT/lm > $OUT/lm.log 2>&1
fi

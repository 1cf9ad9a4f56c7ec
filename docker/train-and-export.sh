#!/bin/sh
# The trainer image's command: train on a corpus, then export the best checkpoint into the model repository
# as the next free version of a name, which a server started afterwards serves ("name" = its latest version).
# Extra arguments go to `charlm-train train`, e.g. `--arch gru --layers 1 --max-steps 2000`.
# Env: CHARLM_TRAIN_CORPUS (shakespeare), CHARLM_TRAIN_SECONDS (600), CHARLM_TRAIN_NAME (shakespeare),
#      CHARLM_MODEL_REPO (models).
set -eu
run="runs/$(date -u +%Y%m%dT%H%M%SZ)"  # a new run folder each time: a rerun never clobbers an earlier run
corpus="${CHARLM_TRAIN_CORPUS:-shakespeare}"
seconds="${CHARLM_TRAIN_SECONDS:-600}"
name="${CHARLM_TRAIN_NAME:-shakespeare}"
repo="${CHARLM_MODEL_REPO:-models}"
echo "train-and-export: training on $corpus for up to ${seconds}s into $run" >&2
charlm-train train --corpus "$corpus" --out-dir "$run" --max-seconds "$seconds" --no-progress "$@"
charlm-train export "$run/best.pt" --repo "$repo" --name "$name" \
    --train-command "charlm-train train --corpus $corpus --out-dir $run --max-seconds $seconds $*"

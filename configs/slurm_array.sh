#!/bin/bash
# tilesegd as a SLURM job array, no Dask scheduler: task I of N segments scenes I, I+N, I+2N...
# of the sorted scene list (--shard I/N) on its own GPU, into its own output directory.
#
#   mkdir -p logs && sbatch configs/slurm_array.sh            # 8 tasks: --array=0-7
#   sbatch --array=0-31 configs/slurm_array.sh                # or as many as you like
#
# Resubmitting the same array resumes: finished scenes are skipped, half-done ones continue.
#SBATCH --job-name=tilesegd
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=logs/tilesegd-%A_%a.out
set -euo pipefail

SCENES=${SCENES:-/scratch/$USER/scenes}
MODEL=${MODEL:-/scratch/$USER/model.pt2}
OUT=${OUT:-/scratch/$USER/out}
SIF=${SIF:-$HOME/tilesegd.sif}          # apptainer build tilesegd.sif containers/tilesegd.def

I=${SLURM_ARRAY_TASK_ID}
N=${SLURM_ARRAY_TASK_COUNT}
# One output directory per shard: each run holds a lock on its own and writes its own
# run.json / summary.csv. Merge the summaries afterwards with
#   awk 'FNR > 1 || NR == 1' "$OUT"/shard-*/summary.csv > "$OUT"/summary.csv
apptainer exec --nv "$SIF" tilesegd run \
    --input "$SCENES" --model "$MODEL" --output "$OUT/shard-$I" \
    --shard "$I/$N" --workers "${SLURM_CPUS_PER_TASK:-8}"
# Without the container (tilesegd installed in a virtualenv):
#   tilesegd run --input "$SCENES" --model "$MODEL" --output "$OUT/shard-$I" --shard "$I/$N"

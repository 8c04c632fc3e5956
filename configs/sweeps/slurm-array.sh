#!/usr/bin/env bash
# Run a numasim sweep as a Slurm job array: one shard per array task, then merge.
#
#   sbatch --array=1-16 configs/sweeps/slurm-array.sh configs/sweeps/notifier.toml
#   # when all tasks are done:
#   numasim merge out/notifier/shard-* --out out/notifier/all
#
# Every shard runs the runs whose index is congruent to its number modulo the shard count,
# writes them under its own directory, and records the sweep's fingerprint so that merge
# refuses to join shards of different sweeps. A shard that is run again skips the runs it
# already finished, so a failed array task can simply be resubmitted.
#SBATCH --job-name=numasim-sweep
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --output=numasim-%A_%a.log
set -euo pipefail

sweep_file=${1:?usage: slurm-array.sh SWEEP_FILE}
name=$(basename "$sweep_file" .toml)
shards=${SLURM_ARRAY_TASK_COUNT:?run with sbatch --array=1-N}
shard=${SLURM_ARRAY_TASK_ID:?run with sbatch --array=1-N}

numasim sweep "$sweep_file" \
    --shard "$shard/$shards" \
    --jobs "${SLURM_CPUS_PER_TASK:-1}" \
    --out "out/$name/shard-$shard"

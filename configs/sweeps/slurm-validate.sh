#!/usr/bin/env bash
# Run `numasim validate --all` as a Slurm job array: one slice of the (case, kernel) pairs
# per array task, then merge.
#
#   sbatch --array=1-24 configs/sweeps/slurm-validate.sh 6.1,6.12,6.18,7.3 3
#   # when all tasks are done (the merge boots nothing; it judges the kernel runs again):
#   numasim merge out/validate-all/shard-* --out out/validate-all/merged
#
# Every task boots its pairs' kernels under QEMU (KVM where /dev/kvm works, TCG otherwise),
# so the nodes need QEMU and the kernel cache (NUMASIM_KERNEL_CACHE, shared storage so the
# merge finds the same releases). --reuse lets a resubmitted task keep the runs it finished.
#SBATCH --job-name=numasim-validate
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --output=numasim-validate-%A_%a.log
set -euo pipefail

kernels=${1:?usage: slurm-validate.sh KERNELS [REPEAT]}
repeat=${2:-1}
shards=${SLURM_ARRAY_TASK_COUNT:?run with sbatch --array=1-N}
shard=${SLURM_ARRAY_TASK_ID:?run with sbatch --array=1-N}

# Exit status 3 (a disagreement) is a result, not a failed task.
numasim validate --all --kernel "$kernels" --repeat "$repeat" --reuse \
    --shard "$shard/$shards" \
    --out "out/validate-all/shard-$shard" || [ $? -eq 3 ]

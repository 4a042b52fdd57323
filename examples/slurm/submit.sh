#!/bin/bash
# Submit an experiment as N array tasks and its merge, chained with --dependency=afterok:
#   examples/slurm/submit.sh experiments/depth.toml 16 [results] [plots]
# Prints the array's and the merge's job ids.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
spec=${1:?usage: submit.sh SPEC N [RESULTS] [PLOTS]}
n=${2:?usage: submit.sh SPEC N [RESULTS] [PLOTS]}
out=${3:-results}
plots=${4:-plots}
array=$(sbatch --parsable --array=0-$((n - 1)) "$here/sweep.sbatch" "$spec" "$out")
merge=$(sbatch --parsable --dependency=afterok:"$array" "$here/merge.sbatch" "$spec" "$out" "$plots")
echo "$array $merge"

#!/usr/bin/env bash
# The fit benchmark (fit_all_pairs.py) on two versions of nsync, one after the other on one machine,
# so that their ratios to the arithmetic floor compare like with like (each run times its own floors).
#
#   experiments/benchmarks/fit_versions.sh REV [OUT]      # REV: the version to compare with, e.g. 0fc459d
#
# REV is checked out into a temporary git worktree and run with this checkout's virtualenv; the caches
# (SmolLM2's shape, 0.4 GB, and the 7B shape, 3.3 GB) are written once under OUT (default runs/benchmarks).
# Takes about 45 minutes on 2 cores; the summary lines of each run are printed, the logs stay in OUT.
set -euo pipefail
rev=${1:?usage: fit_versions.sh REV [OUT]}
root=$(git rev-parse --show-toplevel)
out=$(realpath -m "${2:-$root/runs/benchmarks}")
py=${PYTHON:-$root/.venv/bin/python}
old=$(mktemp -d)
git -C "$root" worktree add -q --detach "$old" "$rev"
trap 'git -C "$root" worktree remove --force "$old"' EXIT
mkdir -p "$out"
run() {  # tree label args...
  local tree=$1 label=$2; shift 2
  echo "== $label ($(date +%T))"
  (cd "$tree" && PYTHONPATH="$tree" "$py" experiments/benchmarks/fit_all_pairs.py "$@") > "$out/$label.log" 2>&1
  grep -E "^nsync \(|lower floor" "$out/$label.log" | tail -2
}
smollm2="--shape smollm2 --paper-sources 6 --runs validation --cache $out/fit_31x576_813"
b7="--shape 7b --directions A->B --paper-sources 1 --floor-sources 2 --runs test --cache $out/fit_33x4096_813"
run "$old" smollm2_$rev $smollm2
run "$root" smollm2_HEAD $smollm2
run "$old" 7b_$rev $b7
run "$root" 7b_HEAD $b7

#!/usr/bin/env bash
# A new user's first minutes, measured: clone the repository (its committed HEAD) into a fresh
# folder, `make install` into a fresh venv with a cold pip cache and no converted model, then run
# the quickstart; time each step and list every ERROR or warning line of both logs.
#
#   experiments/benchmarks/first_ten_minutes.sh            # the committed HEAD of this checkout
#   KEEP=1 experiments/benchmarks/first_ten_minutes.sh     # keep the clone (its logs, runs/) afterwards
#
# The install takes torch==2.13.0 from wherever pip finds it (a local wheel on CPU machines) and
# everything else from the package index. Prints a summary line to paste into README.
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d /tmp/nsync-first-minutes-XXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
export PIP_CACHE_DIR="$work/pip-cache"      # a machine that never installed these packages
export NSYNC_HOME="$work/nsync-home"         # no model converted yet (the first load dequantises the GGUF)
export PYTHON="${PYTHON:-python3}"

git clone -q "$repo" "$work/nsync"
cd "$work/nsync"
echo "cloned $(git rev-parse --short HEAD) into $work/nsync ($(nproc) cores)"

t0=$(date +%s)
make install PYTHON="$PYTHON" > install.log 2>&1 || { tail -30 install.log; exit 1; }
t1=$(date +%s)
echo "install: $((t1 - t0)) s"
.venv/bin/python experiments/quickstart.py > quickstart.log 2>&1 || { tail -30 quickstart.log; exit 1; }
t2=$(date +%s)
echo "quickstart: $((t2 - t1)) s"

echo "--- the quickstart's table"
sed -n '/| condition |/,/best layer pair/p' quickstart.log
echo "--- ERROR and warning lines (none expected)"
# pip's notes on this machine's own index configuration (extra local index folders that do not
# hold a package) are the machine's, not nsync's: counted apart
machine="is ignored: it is neither a file nor a directory"
echo "(pip lines about this machine's index configuration, not counted: $(grep -c "$machine" install.log || true))"
flagged=$(grep -inE "error|warn|deprecat" install.log quickstart.log | grep -v "$machine" || true)
echo "${flagged:-none}"
echo "summary: fresh clone to the quickstart's figure in $(( (t2 - t0) / 60 )) min $(( (t2 - t0) % 60 )) s" \
     "(install $((t1 - t0)) s, quickstart $((t2 - t1)) s) on $(nproc) cores; $(echo -n "$flagged" | grep -c . || true) ERROR/warning lines"

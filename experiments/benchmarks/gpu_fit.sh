#!/usr/bin/env bash
# The fit at the paper's 7B shape on one GPU (nsync.fit accelerator=gpu, the paper's per-pair
# algorithm and the floors on the same GPU), for a lent device machine:
#   bash experiments/benchmarks/gpu_fit.sh            # prints the figures; the log goes to $OUT (or /tmp)
# The device image holds torch, Lightning, torchmetrics, pandas, pyarrow and scikit-learn; nsync's
# other requirements (omegaconf, lazy_loader, ...) travel as wheels in .whl (docs/how-to/gpu.md).
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 experiments/benchmarks/fit_all_pairs.py --shape 7b --directions "A->B" --accelerator gpu --paper-sources 4 \
    --floor-sources 8 --runs test,validation --cache /tmp/nsync_7b 2>&1 | tee "${OUT:-/tmp}/gpu_fit.log"

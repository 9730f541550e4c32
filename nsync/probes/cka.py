"""Linear CKA between two sets of states, debiased: a similarity that needs no fitting.

Centred kernel alignment (Kornblith et al., 2019) compares the pair-by-pair similarity structure
of two representations: ``CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with the linear
kernels ``K = X Xᵀ`` and ``L = Y Yᵀ``. The plain (biased) HSIC makes unrelated states look similar
when there are not many more rows than dimensions (at 250 rows of 576 dimensions, two independent
Gaussian matrices score about 0.7), so the unbiased HSIC estimator (Song et al., 2012) is used:
unrelated states score about 0, and a low SyncR² next to a high CKA points to a fitting problem.
"""

from __future__ import annotations

import torch


def _gram(x: torch.Tensor) -> torch.Tensor:
    """The linear kernel of ``x`` ``[n, d]`` with its diagonal zeroed (float64). Columns are
    centred first: CKA does not change, and a massive constant dimension (thousands, in LLM
    residual streams) would otherwise swamp the rest in rounding."""
    x = x.double()
    x = x - x.mean(0)
    k = x @ x.T
    k.fill_diagonal_(0.0)
    return k


class _Kernel:
    """What the unbiased HSIC needs of one kernel: the kernel, its row sums and its total."""

    def __init__(self, x: torch.Tensor):
        self.k = _gram(x)
        self.rows = self.k.sum(1)
        self.total = self.rows.sum()

    def self_hsic(self) -> torch.Tensor:
        """HSIC with itself; NaN for states that do not vary (e.g. the embedding at the last prompt
        token), whose CKA is undefined (a tiny HSIC from rounding would blow the ratio up)."""
        value = self.hsic(self)
        n = self.k.shape[0]
        scale = (self.k**2).sum() / (n * (n - 3))
        return value if value > 1e-10 * scale and value > 0 else torch.tensor(float("nan"), dtype=value.dtype)

    def hsic(self, other: _Kernel) -> torch.Tensor:
        n = self.k.shape[0]
        trace = (self.k * other.k).sum()
        return (trace + self.total * other.total / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * self.rows @ other.rows) / (n * (n - 3))


def debiased_cka(x: torch.Tensor, y: torch.Tensor, max_gram_gb: float = 2.0) -> torch.Tensor:
    """``[S, T]`` debiased linear CKA of every source layer of ``x`` ``[n, S, d]`` against every
    target layer of ``y`` ``[n, T, k]`` (rows are pairs: row i of both sides belong together).
    Needs at least 4 rows; NaN where a layer does not vary. Target kernels are held ``max_gram_gb``
    at a time.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 1, 50, generator=g)
    >>> round(debiased_cka(x, x).item(), 6), abs(debiased_cka(x, torch.randn(200, 1, 50, generator=g)).item()) < 0.05
    (1.0, True)
    """
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 rows, got {n}")
    n_src, n_tgt = x.shape[1], y.shape[1]
    per_chunk = max(1, int(max_gram_gb * 2**30 // (8 * n * n)))
    out = torch.empty((n_src, n_tgt), dtype=torch.float64)
    for start in range(0, n_tgt, per_chunk):
        targets = [_Kernel(y[:, t]) for t in range(start, min(start + per_chunk, n_tgt))]
        self_t = torch.stack([t.self_hsic() for t in targets])
        for s in range(n_src):
            src = _Kernel(x[:, s])  # recomputed per chunk: cheaper than holding every source kernel
            self_s = src.self_hsic()
            hsic = torch.stack([src.hsic(t) for t in targets])
            out[s, start : start + len(targets)] = hsic / (self_s * self_t).sqrt()
    return out

"""The context control: what a conversation's shape alone explains, removed from both sides.

Any two agents in a conversation share its shape: how far into the conversation they are, how
long the prompt has grown, how long the last replies were. States that merely track those
predict each other without any engagement. :func:`context_features` describes each state by
them (utterance index one-hot, prompt length, the lengths of the two replies before it), and
:func:`residualize` removes their least-squares fit (fitted on the training rows only) from the
states, so a probe fitted on the residuals measures what is left.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

#: The numeric covariates besides the utterance index.
CONTEXT_COLUMNS = ("n_prompt_tokens", "reply_length_1", "reply_length_2")


def context_features(turns: pd.DataFrame, model: str, condition: str, rows: np.ndarray) -> pd.DataFrame:
    """One row per entry of ``rows`` (indices into ``cache.states(model, layer, condition)``):
    ``utterance``, ``n_prompt_tokens`` and the token lengths of the replies one and two
    utterances earlier in the same run (0 before the conversation starts).

    The reply lengths come from the run's interactive rows, never from the row itself: a row's
    own ``n_new_tokens`` is the reply that follows the state.
    """
    own = turns[(turns["model"] == model) & (turns["condition"] == condition)].set_index("row")
    own = own.loc[rows, ["run_id", "utterance", "n_prompt_tokens"]].reset_index(drop=True)
    spoken = turns[turns["condition"] == "interactive"].drop_duplicates(["run_id", "utterance"])
    length = dict(zip(zip(spoken["run_id"], spoken["utterance"], strict=True), spoken["n_new_tokens"], strict=True))
    for back in (1, 2):
        own[f"reply_length_{back}"] = [length.get((r, u - back), 0) for r, u in zip(own["run_id"], own["utterance"], strict=True)]
    return own.drop(columns="run_id")


def design(features: pd.DataFrame, fit_rows: np.ndarray) -> np.ndarray:
    """``[rows, 1 + utterances + 3]`` float64: an intercept, the utterance index one-hot (levels
    seen in the fitted rows), and the numeric covariates standardised on the fitted rows."""
    levels = np.unique(features["utterance"].to_numpy()[fit_rows])
    onehot = (features["utterance"].to_numpy()[:, None] == levels[None, :]).astype(np.float64)
    numeric = features[list(CONTEXT_COLUMNS)].to_numpy(dtype=np.float64)
    mean, std = numeric[fit_rows].mean(0), numeric[fit_rows].std(0)
    numeric = (numeric - mean) / np.where(std > 0, std, 1.0)
    # The one-hot columns already span the intercept; lstsq handles the redundancy.
    return np.concatenate([np.ones((len(features), 1)), onehot, numeric], axis=1)


def residualize(states: torch.Tensor, covariates: np.ndarray, fit_rows: np.ndarray) -> torch.Tensor:
    """``states`` ``[rows, layers, hidden]`` minus their least-squares fit on ``covariates``
    ``[rows, k]`` (fitted on ``fit_rows``), in place, layer by layer; returns ``states``.

    >>> x = torch.arange(8.0).reshape(4, 1, 2); c = np.array([[1.0, 0], [1, 1], [1, 2], [1, 3]])
    >>> residualize(x, c, np.arange(4)).abs().max().item() < 1e-5   # exactly linear in c
    True
    """
    c = torch.from_numpy(covariates)
    fit = torch.from_numpy(np.asarray(fit_rows))
    # Solving through the pseudo-inverse of the fitted rows' design once serves every layer.
    pinv = torch.linalg.pinv(c[fit])  # [k, fit rows]
    for i in range(states.shape[1]):
        layer = states[:, i].double()
        coef = pinv @ layer[fit]  # [k, hidden]
        states[:, i] = (layer - c @ coef).to(states.dtype)
    return states

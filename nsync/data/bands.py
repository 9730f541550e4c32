"""Baselines for variance partitioning: feature sets read beside each source state.

A baseline names what the partner's next state might be predicted from *instead of* the
speaker's state; the fit compares the source alone, the baseline alone and both together
(:mod:`nsync.fit.partition`). Each feature is read for the same pair row as the source:

- ``observer``: the source model re-reading the speaker's prompt as a passive reader (the
  ``observer`` condition, one row per speaker row).
- ``own_past``: the target agent's own previous state, before its utterance preceding the
  target (the Granger question: does the speaker's state add to what the partner's own past
  predicts?). Where the target agent has not spoken before, the row gets the training mean and
  an indicator column says so, a band of its own (``own_past:none``) at a fixed penalty ratio:
  brought to the baseline's total variance, one column is in effect unpenalised (a mean of its
  own for those rows, like the intercept). In the state's band, the large penalties a residual
  stream chooses shrank it away, and the baseline missed where opening utterances lie.
- ``context``: the conversation's shape at the target (utterance index one-hot, prompt length,
  the last two replies' lengths), as ``data.remove_context`` uses it.
- ``text:EMBEDDER`` or any re-read model name (``smollm2-135m@untrained``): the states that
  ``nsync.reread`` added for the source utterance (condition ``teacher_forced``).

``a+b`` joins features into one baseline ("all together"); each feature is a band of its own in
the ridge fits (its own penalty, chosen on validation: :func:`nsync.fit.penalties.baseline_bands`,
:func:`nsync.fit.penalties.joint_bands`),
so a small-scale feature is not shrunk to nothing beside a large one. Layered features are read at
the source layer's relative depth (``layer=same``) or at one fixed layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nsync.cache import ActivationCache
from nsync.cache.reader import next_utterances
from nsync.data.context import context_features, design
from nsync.errors import NsyncError

#: Features with fixed meaning; any other name is a re-read model of the cache (``text:...``, ``M@untrained``).
NAMED_FEATURES = ("observer", "own_past", "context")

#: Bands a feature adds beside its states, each at a fixed penalty ratio (not chosen on validation).
INDICATOR_BANDS = {"own_past": "own_past:none"}


@dataclass(frozen=True)
class Baseline:
    """A parsed baseline: its name and the features it joins.

    >>> Baseline.parse("observer+text:all-minilm-l6-v2").features
    ('observer', 'text:all-minilm-l6-v2')
    >>> Baseline.parse("own_past+observer").bands
    ('own_past', 'own_past:none', 'observer')
    """

    name: str
    features: tuple[str, ...]

    @property
    def bands(self) -> tuple[str, ...]:
        """The ridge bands of its features side by side: each feature's states, an indicator band beside them where it has one."""
        return tuple(b for f in self.features for b in (f, *([INDICATOR_BANDS[f]] if f in INDICATOR_BANDS else [])))

    @property
    def fixed(self) -> tuple[bool, ...]:
        """Per band after the first: whether its penalty ratio is fixed (an indicator band)."""
        return tuple(b in INDICATOR_BANDS.values() for b in self.bands[1:])

    @classmethod
    def parse(cls, name: str) -> Baseline:
        features = tuple(f.strip() for f in str(name).split("+"))
        if not all(features) or len(set(features)) != len(features):
            raise NsyncError(f"baseline '{name}' must join distinct feature names with '+', e.g. observer+own_past")
        return cls(str(name), features)


def check_baselines(names: list[str], cache: ActivationCache) -> None:
    """A clear error for a baseline feature the cache cannot provide."""
    turns = cache.turns
    for name in names:
        for feature in Baseline.parse(name).features:
            if feature == "observer" and not (turns["condition"] == "observer").any():
                raise NsyncError(
                    f"baseline feature 'observer' needs observer states, which {cache.root} lacks and only a simulation records (a re-read "
                    "cannot add them): simulate into a new folder with capture.observer=true, e.g. "
                    "`nsync simulate --config configs/simulate/controls.yaml out=runs/partition/cache`"
                )
            if feature not in NAMED_FEATURES and not ((turns["model"] == feature) & (turns["condition"] == "teacher_forced")).any():
                have = sorted(turns.loc[turns["condition"] == "teacher_forced", "model"].unique())
                raise NsyncError(
                    f"baseline feature '{feature}' is not one of {NAMED_FEATURES} nor a re-read model of the cache "
                    f"(re-read: {have}); add it with `{reread_command(feature, cache.root)}`"
                )


def reread_command(feature: str, cache: object) -> str:
    """The command that adds a re-read feature to a cache.

    >>> reread_command("text:all-minilm-l6-v2", "runs/c"), reread_command("smollm2-135m@untrained", "runs/c")
    ('nsync reread cache=runs/c kind=text model=all-minilm-l6-v2', 'nsync reread cache=runs/c kind=untrained model=smollm2-135m')
    """
    if feature.startswith("text:"):
        return f"nsync reread cache={cache} kind=text model={feature.removeprefix('text:')}"
    if feature.endswith("@untrained"):
        return f"nsync reread cache={cache} kind=untrained model={feature.removesuffix('@untrained')}"
    if feature.endswith("@reread"):
        return f"nsync reread cache={cache} kind=trained model={feature.removesuffix('@reread')}"
    return f"nsync reread cache={cache} kind=trained model=MODEL name={feature}"


def layer_at_depth(source_layer: int, n_source_layers: int, n_layers: int) -> int:
    """The layer of a model with ``n_layers`` at the source layer's relative depth.

    >>> layer_at_depth(15, 31, 31), layer_at_depth(30, 31, 19), layer_at_depth(3, 31, 1)
    (15, 18, 0)
    """
    return int(round(source_layer / max(n_source_layers - 1, 1) * (n_layers - 1)))


@dataclass
class BaselineFeatures:
    """A baseline's features for every pair: one ``[pairs, k]`` float32 tensor per source layer
    (the same tensor object for every source layer when no feature depends on it), its bands
    (:attr:`Baseline.bands`) side by side; ``starts`` are the columns where each band after the
    first begins, ``fixed`` whether its penalty ratio is fixed (:attr:`Baseline.fixed`)."""

    per_source: list[torch.Tensor]
    starts: list[int]
    fixed: tuple[bool, ...] = ()


class BandReader:
    """Reads a baseline's features for every pair of a data module's pairs table (:meth:`read`)."""

    def __init__(
        self,
        cache: ActivationCache,
        pairs: pd.DataFrame,
        source_model: str,
        target_model: str,
        target_condition: str,
        fit_rows: np.ndarray,
        layer: str | int = "same",
    ):
        self.cache, self.pairs, self.fit_rows, self.layer = cache, pairs, fit_rows, layer
        self.source_model, self.target_model, self.target_condition = source_model, target_model, target_condition
        self.n_source_layers = len(cache.layer_names(source_model))

    def read(self, baseline: Baseline, source_layers: list[int]) -> BaselineFeatures:
        if not self.depends_on_source_layer(baseline):  # one tensor serves every source layer
            parts = [band for f in baseline.features for band in self._feature(f, source_layers[:1])[0]]
            return BaselineFeatures([_side_by_side(parts)] * len(source_layers), _starts(parts), baseline.fixed)
        layered = [self._feature(f, source_layers) for f in baseline.features]  # [feature][source layer][band]
        per_source = [_side_by_side([band for f in layered for band in f[i]]) for i in range(len(source_layers))]
        return BaselineFeatures(per_source, _starts([band for f in layered for band in f[0]]), baseline.fixed)

    def depends_on_source_layer(self, baseline: Baseline) -> bool:
        return self.layer == "same" and any(
            f in ("observer", "own_past") or len(self.cache.layer_names(f)) > 1 for f in baseline.features if f != "context"
        )

    # -- features --------------------------------------------------------------------------------

    def _layers(self, model: str, source_layers: list[int]) -> list[int]:
        n = len(self.cache.layer_names(model))
        if self.layer == "same":
            return [layer_at_depth(s, self.n_source_layers, n) for s in source_layers]
        layer = int(self.layer)
        if not 0 <= layer < n:
            raise NsyncError(f"partition.layer {layer} is out of range for {model} (layers 0..{n - 1})")
        return [layer] * len(source_layers)

    def _states(self, model: str, condition: str, rows: np.ndarray, source_layers: list[int], missing: np.ndarray | None = None):
        """Per source layer ``[pairs, hidden]`` of ``model``'s ``rows`` (-1 rows: the fitted rows' mean)."""
        out, read = [], {}
        for layer in self._layers(model, source_layers):
            if layer not in read:
                x = self.cache.read_rows(model, layer, np.where(rows >= 0, rows, 0), condition, dtype=np.float32)
                if missing is not None and missing.any():
                    x[missing] = x[self.fit_rows[~missing[self.fit_rows]]].mean(0)
                read[layer] = torch.from_numpy(x)
            out.append(read[layer])
        return out

    def _aligned_rows(self, model: str, condition: str) -> np.ndarray:
        """Rows of ``model``'s ``condition`` states at each pair's source utterance (same run)."""
        turns = self.cache.turns
        rows = turns[(turns["model"] == model) & (turns["condition"] == condition)]
        found = next_utterances(rows, self.pairs["run_id"].to_numpy(), self.pairs["t"].to_numpy(), 0)
        if (found < 0).any():
            raise NsyncError(
                f"{int((found < 0).sum())} of {len(found)} source utterances have no '{condition}' state of {model}; "
                f"{'re-read the whole cache (python -m nsync reread)' if condition == 'teacher_forced' else 'simulate with capture.observer=true'}"
            )
        return rows["row"].to_numpy()[found]

    def _feature(self, feature: str, source_layers: list[int]) -> list[list[torch.Tensor]]:
        """Per source layer the feature's bands (``[pairs, k]`` each; own_past: its state and its indicator)."""
        if feature == "own_past":
            return self._own_past(source_layers)
        if feature == "observer":
            states = self._states(self.source_model, "observer", self._aligned_rows(self.source_model, "observer"), source_layers)
        elif feature == "context":
            features = context_features(self.cache.turns, self.target_model, self.target_condition, self.pairs["target_row"].to_numpy())
            x = torch.from_numpy(design(features, self.fit_rows)[:, 1:].astype(np.float32))  # the probe has its own intercept
            states = [x] * len(source_layers)
        else:
            states = self._states(feature, "teacher_forced", self._aligned_rows(feature, "teacher_forced"), source_layers)
        return [[x] for x in states]

    def _own_past(self, source_layers: list[int]) -> list[list[torch.Tensor]]:
        turns = self.cache.turns
        spoken = turns[(turns["model"] == self.target_model) & (turns["condition"] == "interactive")]
        p = self.pairs
        found = next_utterances(spoken, p["target_run_id"].to_numpy(), p["target_utterance"].to_numpy(), -1, agent=p["target_agent"].to_numpy())
        missing = found < 0
        rows = np.where(missing, -1, spoken["row"].to_numpy()[np.where(missing, 0, found)])
        indicator = torch.from_numpy(missing.astype(np.float32))[:, None]
        return [[x, indicator] for x in self._states(self.target_model, "interactive", rows, source_layers, missing)]


def _side_by_side(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _starts(parts: list[torch.Tensor]) -> list[int]:
    """Columns where each band after the first begins, the bands side by side."""
    return np.cumsum([p.shape[1] for p in parts])[:-1].tolist()

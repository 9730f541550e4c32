"""``DataConfig``: which pairs of a cache a fit uses and how they are split (the ``data.*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from nsync.cache.layout import CONDITIONS, check_flag_names
from nsync.data.pairs import DIRECTIONS, PAIRINGS, check_directions
from nsync.data.splits import SPLITS
from nsync.errors import NsyncError


@dataclass
class DataConfig:
    """Which pairs, which split.

    >>> DataConfig(cache="runs/quickstart/cache", split="persona").split_seeds
    [0, 1, 2]
    """

    cache: str = field(default=MISSING, metadata={"help": "activation cache folder (from nsync simulate or import-reference)"})
    source_model: Optional[str] = field(default=None, metadata={"help": "model whose states are the source (default: the cache's only model)"})
    target_model: Optional[str] = field(default=None, metadata={"help": "model whose states are the target (default: the cache's only model)"})
    directions: list[str] = field(
        default_factory=lambda: list(DIRECTIONS),
        metadata={
            "help": "A->B (source: agent 0, target: the utterance lag later), B->A; agent pairs i->j (target: agent j's lag-th next utterance after the source's); all: every ordered pair of agents"
        },
    )
    lag: int = field(
        default=1,
        metadata={"help": "A->B, B->A: target utterance t + lag (1: the partner's next utterance); i->j: agent j's lag-th utterance after t"},
    )
    condition: str = field(
        default="interactive",
        metadata={"help": "source states: interactive, observer (the no-engagement control), teacher_forced (re-read by nsync.reread)"},
    )
    target_condition: str = field(default="interactive", metadata={"help": "target states: interactive, or teacher_forced (untrained-model control)"})
    pairing: str = field(
        default="partner", metadata={"help": f"where targets come from: one of {PAIRINGS.names()} or a registered one (see nsync.data.pairs)"}
    )
    exclude_flags: list[str] = field(
        default_factory=list,
        metadata={
            "help": "leave out pairs whose source or target utterance carries one of these reply flags: empty, early_leave, echo (every kind) or echo:<kind> (cue, goal, background, scenario, partner, own_reply); e.g. [echo, empty]"
        },
    )
    remove_context: bool = field(
        default=False,
        metadata={
            "help": "the context control: regress sources and targets on the utterance index, prompt length and the last two replies' lengths (fitted on the training side), fit on the residuals"
        },
    )
    split: str = field(default="interaction", metadata={"help": f"grouping of the train/test split: one of {SPLITS}"})
    split_seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "one split per seed; results are mean and std over them"})
    test_size: float = field(default=0.2, metadata={"help": "share of groups held out for testing"})
    val_size: float = field(
        default=0.1,
        metadata={
            "help": "share of training groups used for validation when something is chosen on it (an alpha grid, MLP early stopping); a single alpha fits on the whole training side"
        },
    )
    max_pairs: Optional[int] = field(default=None, metadata={"help": "pair budget per direction, whole episodes kept (the paper: 6500)"})
    source_layers: list[int] = field(default_factory=list, metadata={"help": "source layers (empty: all, 0 = embeddings)"})
    source_layer_step: int = field(default=1, metadata={"help": "with source_layers empty: every k-th layer from 0 (quicker looks on a CPU)"})
    target_layers: list[int] = field(default_factory=list, metadata={"help": "target layers (empty: all)"})
    batch_size: int = field(default=2048, metadata={"help": "rows per batch"})

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise NsyncError(f"data.split must be one of {SPLITS}, got '{self.split}'")
        check_directions(list(self.directions))
        for key in ("condition", "target_condition"):
            if getattr(self, key) not in CONDITIONS:
                raise NsyncError(f"data.{key} must be one of {CONDITIONS}, got '{getattr(self, key)}'")
        if self.pairing not in PAIRINGS:
            raise NsyncError(f"data.pairing must be one of {PAIRINGS.names()}, got '{self.pairing}'")
        check_flag_names(list(self.exclude_flags))
        if self.source_layer_step < 1:
            raise NsyncError(f"data.source_layer_step must be at least 1, got {self.source_layer_step}")
        if not self.split_seeds:
            raise NsyncError("data.split_seeds must list at least one seed")
        if self.batch_size < 1:
            raise NsyncError(f"data.batch_size must be at least 1, got {self.batch_size}")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Ranges of the numeric keys, checked before any data is read."""
        if self.lag < 1:
            raise NsyncError(f"data.lag must be at least 1 (1: the partner's next utterance), got {self.lag}")
        if not 0 < self.test_size < 1:
            raise NsyncError(
                f"data.test_size must be a share strictly between 0 and 1 (e.g. 0.2 holds out a fifth of the groups), got {self.test_size}"
            )
        if not 0 <= self.val_size < 1:
            raise NsyncError(
                f"data.val_size must be a share of the training groups from 0 (no validation part) up to, not including, 1 (e.g. 0.1), got {self.val_size}"
            )
        if self.max_pairs is not None and self.max_pairs < 1:
            raise NsyncError(f"data.max_pairs must be a positive number of pairs per direction, or null for no budget, got {self.max_pairs}")
        for key in ("split_seeds", "source_layers", "target_layers"):
            negative = [v for v in getattr(self, key) if v < 0]
            if negative:
                what = "seeds from 0" if key == "split_seeds" else "layer indices from 0 (0: the embeddings)"
                raise NsyncError(f"data.{key} must list {what}, got {list(getattr(self, key))}")

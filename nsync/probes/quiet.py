"""Lightning's output around probe fits, kept to what says something about the fit."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

#: Lightning warnings that every chunk's Trainer would repeat and that say nothing about the fit.
LIGHTNING_NOISE = (
    ".*configure_optimizers. returned .None.",  # the closed-form probe has no optimiser
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*does not have many workers.*",
    ".*Total length of .DataLoader. across ranks is zero.*",  # no validation part
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Around Trainers that fit probes (a fit enters it once per run, around one Trainer per chunk
    of source layers; a user around their own): Lightning's per-Trainer banners (accelerators,
    model summaries, tips) and :data:`LIGHTNING_NOISE` stay out of the output. Scoped, so
    importing nsync changes no warning filter or logger level of the user's process."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            for message in LIGHTNING_NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        lightning_log.setLevel(level)

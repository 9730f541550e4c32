"""Pairs, grouped splits and the Lightning DataModule over an activation cache."""

from nsync.data.config import DataConfig
from nsync.data.datamodule import SynchronyDataModule
from nsync.data.pairs import DIRECTIONS, PAIRINGS, build_pairs
from nsync.data.splits import SPLITS, Split, make_split

__all__ = ["DIRECTIONS", "PAIRINGS", "DataConfig", "SPLITS", "Split", "SynchronyDataModule", "build_pairs", "make_split"]

"""Analyses over fit runs: bootstrap intervals over episodes and the controls summary."""

from nsync.analysis.bootstrap import EpisodeBootstrap, replicate_r2, replicate_sync_r2

__all__ = ["EpisodeBootstrap", "replicate_r2", "replicate_sync_r2"]

"""``RunFolder``: a fit run's folder and the name of everything in it.

Every writer and reader of a run folder goes through this class (the fit itself, the controls,
the analysis and report stages, the experiments), so a file's name lives in one place:

- ``results.json``: the :class:`~nsync.fit.results.FitResult` (written last: its presence means
  the run is complete);
- ``bootstrap.npy``: the run's SyncR² bootstrap replicates ``[n_boot]``;
- ``partition_bootstrap.npz``: the partition's replicates, ``<baseline>/<quantity>`` -> ``[n_boot]``;
- ``episode_sync.csv``: each test episode's SyncR² per split seed and direction;
- ``weights.safetensors``: each source layer's map to its chosen target (first split seed);
- ``config.yaml``: the fit's config; plots (``*.png``, named by :mod:`nsync.fit.plots`) and the W&B run.

>>> folder = RunFolder("runs/quickstart/controls/main")
>>> folder.results.name, folder.bootstrap.name
('results.json', 'bootstrap.npy')
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nsync.errors import NsyncError

if TYPE_CHECKING:
    import torch


@dataclass
class Artefacts:
    """What a run writes beside results.json."""

    bootstrap: np.ndarray | None = None  # [n_boot] the run's SyncR² replicates
    partition_bootstrap: dict[str, np.ndarray] = field(default_factory=dict)  # "<baseline>/<quantity>" -> [n_boot]
    episodes: list[dict] = field(default_factory=list)  # per (split seed, direction, test episode) SyncR²
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # "<direction>/source_<s>/target_<t>/weight" (and /bias)


class RunFolder:
    """A fit run's folder: the paths of its files, and how each is read and written."""

    RESULTS = "results.json"
    BOOTSTRAP = "bootstrap.npy"
    PARTITION_BOOTSTRAP = "partition_bootstrap.npz"
    EPISODES = "episode_sync.csv"
    WEIGHTS = "weights.safetensors"
    CONFIG = "config.yaml"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def bootstrap(self) -> Path:
        return self.path / self.BOOTSTRAP

    @property
    def partition_bootstrap(self) -> Path:
        return self.path / self.PARTITION_BOOTSTRAP

    @property
    def episodes(self) -> Path:
        return self.path / self.EPISODES

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    def is_complete(self) -> bool:
        """Whether a fit finished here (results.json is written last)."""
        return self.results.is_file()

    def clear(self) -> None:
        """Remove an earlier run's artefacts (``overwrite=true``), results.json first: a new run
        never mixes with an old one's files, and until it finishes the folder reads as incomplete."""
        for path in (self.results, self.bootstrap, self.partition_bootstrap, self.episodes, self.weights, self.config, *self.path.glob("*.png")):
            path.unlink(missing_ok=True)

    def read_bootstrap(self) -> np.ndarray | None:
        """The run's SyncR² replicates, None where it ran without a bootstrap."""
        return np.load(self.bootstrap) if self.bootstrap.is_file() else None

    def read_partition_bootstrap(self) -> dict[str, np.ndarray]:
        if not self.partition_bootstrap.is_file():
            return {}
        with np.load(self.partition_bootstrap) as z:
            return {k: z[k] for k in z.files}

    def read_episodes(self):
        """``episode_sync.csv`` as a DataFrame (None where the folder has none)."""
        import pandas as pd

        return pd.read_csv(self.episodes) if self.episodes.is_file() else None

    def read_weights(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if not self.weights.is_file():
            raise NsyncError(f"{self.path} holds no {self.WEIGHTS}; fit with save_weights=true")
        return load_file(str(self.weights))

    def write_artefacts(self, artefacts: Artefacts, config_yaml: str) -> None:
        """Everything but results.json and the plots."""
        import pandas as pd
        from safetensors.torch import save_file

        self.path.mkdir(parents=True, exist_ok=True)
        if artefacts.weights:
            save_file(artefacts.weights, str(self.weights))
        if artefacts.bootstrap is not None:
            np.save(self.bootstrap, artefacts.bootstrap)
        if artefacts.partition_bootstrap:
            np.savez(self.partition_bootstrap, **artefacts.partition_bootstrap)  # type: ignore[arg-type]  # numpy's stub types **kwds against allow_pickle
        pd.DataFrame(artefacts.episodes).to_csv(self.episodes, index=False)
        self.config.write_text(config_yaml)

    def write_results(self, text: str) -> Path:
        """``results.json`` atomically: a unique temporary file in the folder, flushed to disk, then
        renamed over the old one (a reader never sees half a file, two writers never share a temp)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{self.RESULTS}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, self.results)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.results


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""``RunFolder``: a fit run's folder and the name of everything in it.

Every writer and reader of a run folder goes through this class (the fit itself, the controls,
the analysis and report stages, the experiments), so a file's name lives in one place:

- ``results.json``: the :class:`~nsync.fit.results.FitResult` (written last: its presence means
  the run is complete);
- ``bootstrap.npy``: the run's SyncR² bootstrap replicates ``[n_boot]``;
- ``partition_bootstrap.npz``: the partition's replicates, ``<baseline>/<quantity>`` -> ``[n_boot]``;
- ``episode_sync.csv``: each test episode's SyncR² per split seed and direction;
- ``weights.safetensors``: each source layer's map to its chosen target (first split seed), with its
  metadata in the header (``nsync.probes.saved.load_probes`` loads them back as probes);
- ``config.yaml``: the fit's config; plots (``*.png``, named by :mod:`nsync.fit.plots`) and the W&B run;
- ``status.json``: ``running`` (with pid, host and start) from the fit's start, ``failed`` (with the
  error) when it stops on one; removed once results.json is written. A folder whose fit was
  killed keeps ``running``, and its readers refuse its half set of artefacts.

One fit at a time writes a run folder (:meth:`RunFolder.lock`); a second one stops with an error
naming the first.

>>> folder = RunFolder("runs/quickstart/controls/main")
>>> folder.results.name, folder.bootstrap.name
('results.json', 'bootstrap.npy')
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nsync.errors import NsyncError
from nsync.storage import FolderLock, disk_errors, make_folder, umask, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    import torch


@dataclass
class Artefacts:
    """What a run writes beside results.json."""

    bootstrap: np.ndarray | None = None  # [n_boot] the run's SyncR² replicates
    partition_bootstrap: dict[str, np.ndarray] = field(default_factory=dict)  # "<baseline>/<quantity>" -> [n_boot]
    episodes: list[dict] = field(default_factory=list)  # per (split seed, direction, test episode) SyncR²
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # "<direction>/source_<s>/target_<t>/weight" (and /bias)
    weights_metadata: dict[str, str] = field(default_factory=dict)  # the file's header: nsync.probes.saved.weights_metadata


class RunFolder:
    """A fit run's folder: the paths of its files, and how each is read and written."""

    RESULTS = "results.json"
    BOOTSTRAP = "bootstrap.npy"
    PARTITION_BOOTSTRAP = "partition_bootstrap.npz"
    EPISODES = "episode_sync.csv"
    WEIGHTS = "weights.safetensors"
    CONFIG = "config.yaml"
    STATUS = "status.json"

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

    @property
    def status(self) -> Path:
        return self.path / self.STATUS

    def lock(self) -> FolderLock:
        """The folder's writer lock (``with folder.lock(): ...``): one fit at a time writes here."""
        return FolderLock(self.path, "the run folder")

    def is_complete(self) -> bool:
        """Whether a fit finished here (results.json is written last)."""
        return self.results.is_file()

    def clear(self) -> None:
        """Remove an earlier run's artefacts (``overwrite=true``), results.json first: a new run
        never mixes with an old one's files, and until it finishes the folder reads as incomplete."""
        for path in (self.results, self.bootstrap, self.partition_bootstrap, self.episodes, self.weights, self.config, *self.path.glob("*.png")):
            path.unlink(missing_ok=True)

    def mark_running(self) -> None:
        """Say in the folder that a fit writes it now (a killed fit leaves this behind)."""
        make_folder(self.path, "the fit's out folder")
        info = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_atomic(self.status, info)

    def mark_failed(self, error: BaseException) -> None:
        """Say in the folder that its fit stopped on ``error`` (its artefacts are no result)."""
        info = self.read_status() | {"state": "failed", "error": f"{type(error).__name__}: {error}"[:2000]}
        write_json_atomic(self.status, info)

    def mark_complete(self) -> None:
        self.status.unlink(missing_ok=True)

    def read_status(self) -> dict:
        """``status.json`` (``{}`` where the folder has none: a finished fit, or none yet)."""
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {}

    def describe_unfinished(self) -> str:
        """Why the folder holds no result: no fit ran here, one failed, or one was stopped."""
        status = self.read_status()
        if status.get("state") == "failed":
            return f"the fit in {self.path} failed ({status.get('error')}); fix the cause and fit again"
        if status.get("state") == "running":
            return (
                f"the fit in {self.path} (pid {status.get('pid')} on {status.get('host')}, started {status.get('started')}) "
                "has not finished: it is still running, or was stopped; fit again (overwrite=true) once it is not running"
            )
        return f"{self.path} holds no finished fit ({self.RESULTS} missing); run the fit first"

    def _require_complete(self) -> None:
        if not self.is_complete():
            raise NsyncError(self.describe_unfinished())

    def read_bootstrap(self) -> np.ndarray | None:
        """The run's SyncR² replicates, None where it ran without a bootstrap."""
        self._require_complete()
        return np.load(self.bootstrap) if self.bootstrap.is_file() else None

    def read_partition_bootstrap(self) -> dict[str, np.ndarray]:
        self._require_complete()
        if not self.partition_bootstrap.is_file():
            return {}
        with np.load(self.partition_bootstrap) as z:
            return {k: z[k] for k in z.files}

    def read_episodes(self):
        """``episode_sync.csv`` as a DataFrame (None where the folder has none)."""
        import pandas as pd

        self._require_complete()
        return pd.read_csv(self.episodes) if self.episodes.is_file() else None

    def read_weights(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        self._require_complete()
        if not self.weights.is_file():
            raise NsyncError(f"{self.path} holds no {self.WEIGHTS}; fit with save_weights=true")
        return load_file(str(self.weights))

    def write_artefacts(self, artefacts: Artefacts, config_yaml: str) -> None:
        """Everything but results.json and the plots."""
        import pandas as pd
        from safetensors.torch import save_file

        with disk_errors(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            if artefacts.weights:
                save_file(artefacts.weights, str(self.weights), metadata=artefacts.weights_metadata or None)
                os.chmod(self.weights, 0o666 & ~umask())  # safetensors writes 0600
            if artefacts.bootstrap is not None:
                np.save(self.bootstrap, artefacts.bootstrap)
            if artefacts.partition_bootstrap:
                np.savez(self.partition_bootstrap, **artefacts.partition_bootstrap)  # type: ignore[arg-type]  # numpy's stub types **kwds against allow_pickle
            pd.DataFrame(artefacts.episodes).to_csv(self.episodes, index=False)
            self.config.write_text(config_yaml)

    def write_results(self, text: str) -> Path:
        """``results.json`` atomically (:func:`nsync.storage.write_text_atomic`): a reader never
        sees half a file, two writers never share a temporary file."""
        self.path.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(self.results, text)

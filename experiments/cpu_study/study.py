"""The CPU study: synchrony of the bundled models with every control, on a 2-core CPU.

    python experiments/cpu_study/study.py                      # everything in study.yaml (make study)
    python experiments/cpu_study/study.py only=[smollm2-135m]  # one pair
    python experiments/cpu_study/study.py report_only=true     # rewrite the report from what is done
    python experiments/cpu_study/study.py stages=[main]        # what is synchronised only (main condition)

For each model pair of ``study.yaml``:

1. simulate SOTOPIA episodes (two sampling seeds each; observer states) into ``OUT/<pair>/cache``;
2. for each view (source model -> target model; a two-model pair has both, each its one direction): every control
   (``nsync.controls``) with the paper's fixed alpha and with the alpha chosen on validation data,
   each with its basic bootstrap interval, the paired difference from the main condition and CKA;
3. the main condition under the persona and scenario splits (the leakage question);
4. affine vs MLP probe on every k-th source layer (the "why linear" question);

then ``docs/cpu_study/`` gets ``results.md`` (a page of the documentation site), ``controls.png``,
``layer_profile.png``, ``heatmap.png`` and the partition's plots.

Every stage is resumable: caches continue where they stopped, finished fits (a run folder with
``results.json``) are re-used, so an interrupted study picks up where it was. The caches and fit
folders stay on the machine that made them (``runs/`` is not committed); ``docs/cpu_study/record.json``
(committed) keeps each finished pair's section, the numbers its plots need and its stage times, so
a pair run on another machine, or whose ``runs/`` folder is gone, stays in the report.

The study reads by stage: ``study_config.py`` (the config), ``study_stages.py`` (simulation and
fits), ``study_report.py`` (tables and readings), ``study_plots.py`` (figures); this file runs them.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the study's stage modules sit beside this script

from study_config import HERE, PairConfig, StudyConfig, views  # noqa: E402
from study_report import Report  # noqa: E402
from study_stages import Study  # noqa: E402

from nsync.config import load_config  # noqa: E402
from nsync.errors import run_cli  # noqa: E402

__all__ = ["PairConfig", "Report", "Study", "StudyConfig", "main", "views"]


def main(argv) -> None:
    args = list(argv)
    if not any(a == "--config" for a in args):
        args = ["--config", str(HERE / "study.yaml"), *args]
    cfg = load_config(StudyConfig, args, prog="experiments/cpu_study/study.py")
    start = time.perf_counter()
    Study(cfg).run()
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    # A kill by SIGTERM unwinds like Ctrl-C: the stage's time is recorded, committed shards stay.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run_cli(main, sys.argv[1:])

"""nsync: neural synchrony between socially interacting language models.

Stages, each in its own subpackage, in pipeline order: ``nsync.scenarios`` (SOTOPIA-format
characters, scenarios, episodes), ``nsync.models`` (the offline model zoo), ``nsync.simulation``
(episodes that record every layer's state), ``nsync.cache`` (the activation cache), ``nsync.data``
(pairs, splits, the DataModule), ``nsync.probes`` (affine and MLP probes), ``nsync.fit`` (the fit
loop and its analyses, results, run folders), ``nsync.judge`` and ``nsync.analysis`` (controls,
social performance, reports); ``nsync.cli`` puts them behind one command. ``nsync.stats`` holds
the statistics as plain functions (R², SyncR², the episode bootstrap, surrogates, the partition,
the time course); ``nsync.testing`` planted data and harnesses.

The public API (stable within a minor version; changed only after a deprecation warning and a
line in CHANGELOG.md; the documentation's Python API page renders it):

- cache: ``nsync.cache.ActivationCache``, ``CacheWriter``, ``ModelInfo``, ``nsync.cache.verify.verify_cache``
- data: ``nsync.data.DataConfig``, ``SynchronyDataModule``, ``make_split``
- probes: ``nsync.probes.AffineProbe``, ``MLPProbe``, ``ProbeResults``, ``fit_ridge``, ``load_probes``, ``score_cache``, ``SavedProbe``
- statistics: ``nsync.stats.r2``, ``nsync.stats.bootstrap``, ``nsync.stats.surrogates``, ``nsync.stats.partition``, ``nsync.stats.timecourse``
- fit: ``nsync.fit.FitConfig``, ``run_fit``, ``FitResult``, ``RunFolder``, ``reusable_result``
- simulation: ``nsync.simulation.SimulateConfig``, ``nsync.simulation.run.simulate``,
  ``nsync.models.load_model``, ``nsync.scenarios.load_scenarios``
- controls and judge: ``nsync.analysis.controls.ControlsConfig``, ``run_controls``,
  ``nsync.judge.run.JudgeConfig``, ``judge_cache``
- extension points: ``nsync.registry.Registry`` and the registries ``PROBE_TYPES``
  (``nsync.fit.probe_types``), ``ANALYSES`` (``nsync.fit.analyses``), ``PAIRINGS`` (``nsync.data.pairs``), ``JUDGE_BACKENDS``
  (``nsync.judge.backends``), ``MODEL_SOURCES`` (``nsync.models.zoo``)
- every command's config keys (``nsync <command> --help``) and the ``results.json`` schema

Everything else may change without notice.
"""

__version__ = "0.1.0"

"""The statistics of a fit, as plain typed functions over per-episode sums and predictions.

No Lightning, config or cache object comes in: every function here takes arrays (numpy or torch)
and returns arrays or small typed records, so each can be tested on its own against an analytic
value or a reference implementation. The fit stage (:mod:`nsync.fit`) feeds them.

- :mod:`nsync.stats.r2`: R² from sums (the one formula), from rows, SyncR² and target choice;
- :mod:`nsync.stats.bootstrap`: the episode bootstrap (replicate weights, replicate R², pooling
  over split seeds, basic intervals, bias correction);
- :mod:`nsync.stats.surrogates`: surrogate re-pairings and their nulls, permutation p-values;
- :mod:`nsync.stats.partition`: the variance-partition shares;
- :mod:`nsync.stats.timecourse`: R² by utterance index with intervals.
"""

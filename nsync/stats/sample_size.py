"""How many test episodes the episode bootstrap's intervals and the surrogate p-values need.

Both treat test episodes as the sample: with few of them an interval covers the population value
less often than it says and a p-value falls below 0.05 more often than 5% of the time under the
null. ``experiments/benchmarks/few_test_episodes.py`` measures both on planted problems with a
known answer; :data:`MIN_TEST_EPISODES` is the smallest count from which they hold their nominal
rates there. Below it nsync still computes and stores them (``results.json``), but prints
:func:`few_test_episodes` in their place. No torch here: the report reads it.
"""

from __future__ import annotations

#: Test episodes per (split seed, direction) from which the intervals and p-values held their
#: nominal rates on planted problems (``python experiments/benchmarks/few_test_episodes.py``).
MIN_TEST_EPISODES = 20


def few_test_episodes(n: int | None) -> str | None:
    """Why intervals and p-values are not shown for a fit whose fewest test episodes per split
    seed and direction are ``n``; None when there are enough (or ``n`` is unknown).

    >>> few_test_episodes(8)
    'only 8 test episodes, fewer than the 20 its intervals and p-values need (planted problems: experiments/benchmarks/few_test_episodes.py)'
    >>> few_test_episodes(21) is None
    True
    """
    if n is None or n >= MIN_TEST_EPISODES:
        return None
    return (
        f"only {n} test episodes, fewer than the {MIN_TEST_EPISODES} its intervals and p-values need "
        "(planted problems: experiments/benchmarks/few_test_episodes.py)"
    )

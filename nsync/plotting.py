"""The one place that chooses matplotlib's backend: where figures are written, never on import.

Every plotting function gets pyplot from :func:`pyplot` (and imports matplotlib only then: a
command's ``--help`` imports none, ``tests/test_imports.py``).
"""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot``, on the file-only Agg backend unless a backend was chosen.

    A choice is ``MPLBACKEND``, a ``backend`` line in a matplotlibrc, ``matplotlib.use(...)``, or a
    pyplot that has already drawn (a notebook, a user's session): any of them is kept, so nsync
    never switches the backend under someone's open figures. Without one, Agg: files need no
    display, and matplotlib's own pick could be a GUI toolkit that needs the main thread.
    """
    import matplotlib

    # None while the backend is still matplotlib's automatic pick, undecided. That pyplot is
    # imported says nothing: Lightning imports it (through torchmetrics) in every fit.
    if matplotlib.rcParams._get_backend_or_none() is None:  # type: ignore[attr-defined]  # private since 3.5, no public equivalent
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

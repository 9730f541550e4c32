"""nsync: neural synchrony between socially interacting language models.

Stages, each in its own subpackage:

- ``nsync.scenarios``: SOTOPIA-format characters, scenarios and episodes (plus a built-in pack).
- ``nsync.models``: the offline model zoo (short names, hub ids, local folders, ``.gguf`` files).
- ``nsync.simulation``: episodes of two or more agents that record every layer's hidden state.
- ``nsync.cache``: the layer-major activation cache those states go into.
"""

__version__ = "0.1.0"

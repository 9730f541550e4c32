"""``python -m nsync.reread cache=CACHE kind=untrained|trained|text [key=value ...]``

Adds teacher-forced states of another network (an untrained copy of the model, another model,
or a sentence embedder) to an activation cache, for the untrained-model and text-only controls.
``--help`` lists every config key.
"""

from nsync.errors import run_cli
from nsync.simulation.reread import main

if __name__ == "__main__":
    run_cli(main)

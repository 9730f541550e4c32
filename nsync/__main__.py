"""``python -m nsync <command> [args]``: the ``nsync`` console script (:mod:`nsync.cli`), e.g.
``python -m nsync simulate --config configs/simulate/quickstart.yaml`` or
``torchrun --nproc_per_node 4 -m nsync simulate ...``."""

from nsync.cli import main

if __name__ == "__main__":
    main()

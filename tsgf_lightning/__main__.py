"""``python -m tsgf_lightning {fit,validate,test,decode} ...``; the ``tsgf`` console command is the same.

``decode`` (:mod:`~tsgf_lightning.decode_cli`) fills the decode cache, optionally in shards; the
others are the LightningCLI stages (:mod:`~tsgf_lightning.cli`).
"""

import sys

from .cli import main


def entry() -> None:
    """The ``tsgf`` command (a console script exits with what it returns, so return nothing)."""
    if sys.argv[1:2] == ["decode"]:
        from .decode_cli import decode_main

        decode_main(sys.argv[2:])
    else:
        main()


if __name__ == "__main__":
    entry()

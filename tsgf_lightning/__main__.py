"""``python -m tsgf_lightning {fit,validate,test} --config FILE``; the ``tsgf`` console command is the same."""

from .cli import main


def entry() -> None:
    """The ``tsgf`` command (a console script exits with what it returns, so return nothing)."""
    main()


if __name__ == "__main__":
    entry()

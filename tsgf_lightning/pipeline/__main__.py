"""``python -m tsgf_lightning.pipeline --config-dir DIR --output-dir OUT`` (see the package's docstring)."""

from .run import main

main()

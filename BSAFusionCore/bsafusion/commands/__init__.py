"""Sub-commands of the ``bsafusion`` CLI, one module each (see :mod:`bsafusion.cli`)."""

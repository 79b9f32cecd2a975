"""Sub-commands of the ``fastweights`` CLI, one module each (see :mod:`fastweights.cli`)."""

"""Sub-commands of the ``fastweights`` CLI (see :mod:`fastweights.cli`)."""

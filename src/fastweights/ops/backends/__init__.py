"""Optional backends: each module defines ``BACKENDS``, a list of :class:`~fastweights.ops.registry.Backend`.

Found by :mod:`fastweights.ops.registry` on first use; a backend whose optional package is missing
stays registered but unavailable (``get_op(rule, name)`` then says what to install).
"""

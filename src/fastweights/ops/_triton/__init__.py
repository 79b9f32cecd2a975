"""fastweights' own Triton kernels (see :mod:`fastweights.ops.backends.triton`); imported only when used."""

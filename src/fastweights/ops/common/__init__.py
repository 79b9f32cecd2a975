"""Pieces the rules share (no rule is defined here):

- :mod:`.chunked`: the building blocks of the hand-differentiated chunk forms (chunk-major layout,
  cache-sized segments, in-chunk decays, the unit-lower-triangular inverse);
- :mod:`.delta_chunk`: the chunkwise WY/UT autograd Function of the delta rule, which also runs the
  gated delta rule given its log decays.
"""

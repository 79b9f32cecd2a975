"""Pieces the rules share (no rule is defined here):

- :mod:`.chunked`: the building blocks of the hand-differentiated chunk forms (chunk-major layout,
  cache-sized segments, in-chunk decays, the unit-lower-triangular inverse);
- :mod:`.checkpointed`: a time loop recomputed from checkpoints, the training form of rules
  with no chunkwise parallel form (the general FWPs, the channel-gated delta rule);
- :mod:`.delta_chunk`: the chunkwise WY/UT autograd Function of the delta rule, which also runs the
  gated delta rule given its log decays.
"""

"""Delta rule (DeltaNet): ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``, ``o_t = S_t^T q_t``."""

from .chunk import chunk_delta_rule
from .naive import naive_delta_rule
from .recurrent import recurrent_delta_rule

__all__ = ["chunk_delta_rule", "naive_delta_rule", "recurrent_delta_rule"]

"""Sum rule (causal linear attention): ``S_t = S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``."""

from .chunk import chunk_sum_rule
from .naive import naive_sum_rule
from .parallel import parallel_sum_rule
from .recurrent import recurrent_sum_rule

__all__ = ["chunk_sum_rule", "naive_sum_rule", "parallel_sum_rule", "recurrent_sum_rule"]

"""The mixers' cores as functions, each in two forms that agree: `chunk_*` (training: parallel
within chunks, a recurrent state between them) and `recurrent_*` (decoding: one step at a time).

They follow flash-linear-attention's `fla.ops` calling convention, so that a mixer can call
fla's fused kernel of the same name instead (`kernels.run_op`): q, k, v of shape (B, T, H, D); a log decay `g`
per head (B, T, H) or per channel (B, T, H, K); `scale` (default K^-0.5) multiplies q;
`initial_state` (B, H, K, V) and `output_final_state`; each returns (o, final_state or None).
The AFT family's running softmax means are here too.
"""

from ablate.nn.ops.aft import (
    causal_biased_softmax_mean,
    causal_softmax_mean,
    causal_softmax_mean_log_space,
    softmax_mean_state,
    softmax_mean_step,
)
from ablate.nn.ops.based import parallel_based, recurrent_based
from ablate.nn.ops.delta_rule import (
    chunk_delta_rule,
    chunk_gated_delta_rule,
    recurrent_delta_rule,
    recurrent_gated_delta_rule,
)
from ablate.nn.ops.gla import (
    chunk_gla,
    chunk_linear_attn,
    chunk_simple_gla,
    recurrent_gla,
    recurrent_linear_attn,
    recurrent_simple_gla,
)

__all__ = [
    "causal_biased_softmax_mean",
    "causal_softmax_mean",
    "causal_softmax_mean_log_space",
    "chunk_delta_rule",
    "chunk_gated_delta_rule",
    "chunk_gla",
    "chunk_linear_attn",
    "chunk_simple_gla",
    "parallel_based",
    "recurrent_based",
    "recurrent_delta_rule",
    "recurrent_gated_delta_rule",
    "recurrent_gla",
    "recurrent_linear_attn",
    "recurrent_simple_gla",
    "softmax_mean_state",
    "softmax_mean_step",
]

"""Hugging Face ``transformers`` integration (``pip install fastweights[hf]``).

Importing this package registers the model type ``"fastweights"`` with ``AutoConfig``,
``AutoModelForCausalLM`` and ``AutoTokenizer`` (whose fast tokenizer reads ``tokenizer.json``)::

    import fastweights.hf
    from transformers import PreTrainedTokenizerFast
    from fastweights.hf import FastWeightsForCausalLM

    model = FastWeightsForCausalLM.from_pretrained("runs/shakespeare-delta")  # or AutoModelForCausalLM
    tok = PreTrainedTokenizerFast(tokenizer_file="runs/shakespeare-delta/tokenizer.json", padding_side="left")
    tok.pad_token = " "  # any token: padded positions are masked out
    batch = tok(["ROMEO:\n", "JULIET:\nO "], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=40, do_sample=True, top_p=0.9, pad_token_id=tok.pad_token_id)

Every attention variant works; the state is a :class:`FastWeightCache`. ``AutoModelForCausalLM``
needs ``"model_type": "fastweights"`` in ``config.json`` (``save_pretrained`` writes it). The core
library never imports ``transformers``.
"""

from __future__ import annotations

try:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("fastweights.hf needs transformers: pip install 'fastweights[hf]'") from e

from .cache import FastWeightCache
from .configuration import MODEL_TYPE, FastWeightsConfig
from .modeling import FastWeightsForCausalLM

AutoConfig.register(MODEL_TYPE, FastWeightsConfig, exist_ok=True)
AutoModelForCausalLM.register(FastWeightsConfig, FastWeightsForCausalLM, exist_ok=True)
AutoTokenizer.register(FastWeightsConfig, fast_tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)

__all__ = ["FastWeightCache", "FastWeightsConfig", "FastWeightsForCausalLM"]

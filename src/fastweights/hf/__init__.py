"""Hugging Face ``transformers`` integration (``pip install fastweights[hf]``).

Importing this package registers the model type ``"fastweights"`` with ``AutoConfig``,
``AutoModelForCausalLM`` and ``AutoTokenizer`` (the fast tokenizer reads ``tokenizer.json``)::

    import fastweights.hf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained("runs/shakespeare-delta")
    tok = AutoTokenizer.from_pretrained("runs/shakespeare-delta")
    out = model.generate(**tok(["ROMEO:", "JULIET: O"], return_tensors="pt", padding=True),
                         max_new_tokens=50, do_sample=True, top_p=0.9)

Every attention variant works; the state is a :class:`FastWeightCache`. The core library never
imports ``transformers``.
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

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

The three ``Auto`` classes' ``from_pretrained`` also report a missing local folder as
``FileNotFoundError("no such folder: runs/typo")`` at once (:func:`~fastweights.hf.configuration.check_local_folder`):
``transformers`` would take it for a Hub repo id. The check runs before the model type is known (it
is read from the folder), so it applies to every model loaded through these classes; it refuses
only names that no Hub repo id can have, and ``<folder>/<name>`` where ``<folder>`` is a local folder
holding fastweights run directories.
"""

from __future__ import annotations

import functools
from typing import Any

try:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("fastweights.hf needs transformers: pip install 'fastweights[hf]'") from e

from .cache import FastWeightCache
from .configuration import MODEL_TYPE, FastWeightsConfig, check_local_folder
from .modeling import FastWeightsForCausalLM

AutoConfig.register(MODEL_TYPE, FastWeightsConfig, exist_ok=True)
AutoModelForCausalLM.register(FastWeightsConfig, FastWeightsForCausalLM, exist_ok=True)
AutoTokenizer.register(FastWeightsConfig, fast_tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)


def _check_local_folders_first(auto: type) -> None:
    """Make ``auto.from_pretrained`` call :func:`check_local_folder` before ``transformers`` resolves the name."""
    original = auto.from_pretrained

    @functools.wraps(original)
    def from_pretrained(pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        check_local_folder(pretrained_model_name_or_path)
        return original(pretrained_model_name_or_path, *args, **kwargs)

    auto.from_pretrained = staticmethod(from_pretrained)


for _auto in (AutoConfig, AutoModelForCausalLM, AutoTokenizer):
    _check_local_folders_first(_auto)

__all__ = ["FastWeightCache", "FastWeightsConfig", "FastWeightsForCausalLM"]

"""The ``embedded`` generation backend, in parts.

=====================  ===========================================================================
:mod:`.backend`        :class:`EmbeddedBackend` and its ``Config``: engines, requests, the model lock
:mod:`.conversion`     where the base model comes from; the packaged GGUF converted once into a
                       Hugging Face folder (:func:`ensure_base_model`)
:mod:`.decoding`       the transformers engine: the decoding loop, stop strings (:func:`until_stop`)
:mod:`.hosting`        LoRA adapters: checked (:func:`citeline.lora.manifest.lora_shape_problems`),
                       loaded into peft, selected per request, unloaded
=====================  ===========================================================================

The llama.cpp engine is :mod:`citeline.generation.llamacpp`.
"""

from citeline.generation.local.backend import EmbeddedBackend
from citeline.generation.local.conversion import BASE_MODEL_NAME, ensure_base_model, packaged_gguf

__all__ = ["BASE_MODEL_NAME", "EmbeddedBackend", "ensure_base_model", "packaged_gguf"]

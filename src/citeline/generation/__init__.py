"""Built-in generation backends, registered as ``citeline.generators`` entry points: ``embedded`` (local
llama.cpp / transformers with LoRA adapters), ``openai`` (any OpenAI-compatible server), ``extractive``."""

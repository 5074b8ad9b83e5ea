"""Built-in generation backends (registered as citeline.generators entry points): local llama.cpp/transformers, OpenAI-compatible HTTP, extractive."""

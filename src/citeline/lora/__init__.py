"""Team LoRA adapters: manifest and its shape check, data, training, evaluation, registry, rollout to model servers."""

"""Grounded answers: the prompt, the assistant, verification of every cited sentence, extractive answers."""

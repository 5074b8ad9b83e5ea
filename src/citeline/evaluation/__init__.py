"""Offline evaluation: retrieval metrics over a labelled set, answer quality over a question set."""

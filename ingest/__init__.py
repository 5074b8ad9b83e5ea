"""Ingest pipeline."""

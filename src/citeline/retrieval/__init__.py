"""Hybrid search as the asking user: dense (HNSW) + lexical (BM25 in SQL) fused by reciprocal rank."""

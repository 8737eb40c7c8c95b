"""Sentence-embedding models: sentence-transformers' layout, pooling, similarity tasks and fidelity."""

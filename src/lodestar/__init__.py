"""Lodestar: an AI platform with memory (inference, embeddings, vectors, gateway)."""

__version__ = "0.1.0"

"""Retrieval over the knowledge base: what search and chat ground their answers in."""

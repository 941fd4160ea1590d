"""Thin resolvers: read the context, call a domain service, map the result to schema types."""

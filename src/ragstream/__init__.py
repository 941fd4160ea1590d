"""ragstream: a GraphQL API server for document-grounded AI chat."""

__version__ = "0.1.0"

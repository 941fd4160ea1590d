"""Repositories: every SQL statement ragstream runs. They flush, never commit."""

"""Evaluations: a user's structured, weighted assessment of an ERP project."""

"""Persistence: SQLAlchemy models, engine/session factory, repositories. All SQL lives here."""

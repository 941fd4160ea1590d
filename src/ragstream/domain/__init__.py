"""Business logic per area. Nothing here knows about GraphQL."""

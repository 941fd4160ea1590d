"""GraphQL object types, inputs and enums, with one explicit mapping from ORM rows per type."""

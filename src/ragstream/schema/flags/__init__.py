"""The GraphQL face of feature flags: features of an account, flag management, usage reports."""

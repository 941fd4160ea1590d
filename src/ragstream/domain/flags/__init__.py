"""Feature flags: which features an account may use, and with which limits."""

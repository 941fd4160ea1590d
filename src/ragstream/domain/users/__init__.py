"""Accounts: profiles, roles and administration."""

"""Identity: password hashing, tokens, sign-in flows and their rate limits."""

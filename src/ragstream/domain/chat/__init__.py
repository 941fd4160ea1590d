"""Chat: conversations, grounded answers streamed as they are generated, limits and usage."""

"""Models: the embedded default, loading any model, and rendering chats with its own template."""

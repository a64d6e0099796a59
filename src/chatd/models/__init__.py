"""Which models can be served, and their loading states."""

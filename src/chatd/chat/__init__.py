"""The conversation <-> tokens: messages, chat templates, (later) tools and images."""

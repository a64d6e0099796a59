"""The engine: scheduling, sampling and detokenising, shared by every runner."""

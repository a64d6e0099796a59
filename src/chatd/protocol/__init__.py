"""The chat-completion contract on the wire, in both dialects (HF/TGI and OpenAI): what a
request may say (request.py) and the shape of every answer (response.py). Shared by server/,
which speaks HTTP, and chat/, which turns a request into a generation; it imports neither."""

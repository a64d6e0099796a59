"""What the chat layer refuses: a request that this model cannot serve as asked. It knows
nothing of HTTP; the server answers every RequestError with 400 and the HF error body."""


class RequestError(ValueError):
    """The request cannot be served as asked; the message names the field and says why."""

"""Why a model cannot answer now. No HTTP here: server/errors.py maps each to a status, the HF
error body and the headers that tell a client whether and when to retry. Each keeps its
arguments in `args`, so it pickles (a cluster replica raises what the ingress answers)."""


class ModelNotFound(LookupError):
    """No served model, alias or local Hugging Face snapshot has this name."""


class ModelLoading(Exception):
    """Still loading: `estimated_time` seconds left, worked out from its progress."""

    def __init__(self, message: str, estimated_time: float):
        super().__init__(message, estimated_time)
        self.estimated_time = estimated_time

    def __str__(self) -> str:
        return self.args[0]


class ModelFailed(Exception):
    """Its last load failed; it is tried again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message, retry_after)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.args[0]


class NoRoom(Exception):
    """Loading it would pass --max-loaded-models or --memory-budget, and no idle model can
    make room: try again after `retry_after` seconds, or never (None: it alone is larger
    than the budget)."""

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message, retry_after)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.args[0]


class PullRefused(Exception):
    """This server will not download the model: outside --pull-allow, larger than
    --memory-budget, or gated or private on the Hub without a token that opens it."""


class NoWeights(Exception):
    """The Hub repo holds nothing chatd can load (no GGUF, no safetensors or PyTorch weights)."""


class NoDisk(Exception):
    """Not enough free disk in the Hugging Face cache for the download."""

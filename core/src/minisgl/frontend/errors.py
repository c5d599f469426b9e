"""Error kinds: what went wrong with a request, said once, where it is found.

The request layer and the engine raise or report a kind; front doors translate it (the
server maps each kind to an HTTP status and an OpenAI error code from one table, `LLM`
raises it). Nobody classifies an error by the words of its message."""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"  # a value the request may not hold
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # prompt + completion cannot fit
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"  # a stored object the request names (a response id) is not there
    CAPACITY = "capacity"  # too much in flight now: retry later
    NOT_READY = "not_ready"  # loading, warming or draining
    ENGINE_DEAD = "engine_dead"  # the engine that held the request is gone
    TIMEOUT = "timeout"  # the request ran past its deadline (the server's REQUEST_TIMEOUT)
    UNAVAILABLE = "unavailable"  # a part this server lacks or cannot run here (a package, a runner)
    INTERNAL = "internal"  # a bug: a 500


class RequestError(ValueError):
    """A request that cannot be served as asked. `param` names the field at fault in the
    front door's own vocabulary (`max_tokens` on the OpenAI routes)."""

    def __init__(self, kind: ErrorKind | str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.message = message
        self.param = param

    def __reduce__(self):  # crosses process boundaries (tokenizer workers)
        return (RequestError, (self.kind.value, self.message, self.param))


def invalid(message: str, param: str | None = None) -> RequestError:
    return RequestError(ErrorKind.INVALID_REQUEST, message, param)

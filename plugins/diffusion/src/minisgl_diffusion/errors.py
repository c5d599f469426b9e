"""Errors the diffusion runners raise: request-layer errors with their kind, so the server
answers them from its one table (400 for bad input naming the field, 503 for a missing
package or model) without importing this plugin."""

from __future__ import annotations

from minisgl.frontend.errors import ErrorKind, RequestError


class DiffusionError(RequestError):
    kind_default = ErrorKind.INTERNAL

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(self.kind_default, message, param)


class InvalidDiffusionRequest(DiffusionError):
    """The request asks for something the runner cannot do (bad size, empty prompt...)."""

    kind_default = ErrorKind.INVALID_REQUEST


class DiffusionUnavailable(DiffusionError):
    """A package or a model this runner needs is missing here; the message says what to install
    or where to point."""

    kind_default = ErrorKind.UNAVAILABLE

"""Errors the diffusion runners raise. Each carries the HTTP status the server answers with
(duck-typed there, so the server never imports this plugin) and, for bad input, the name
of the field at fault."""

from __future__ import annotations


class DiffusionError(Exception):
    status = 500

    def __init__(self, message: str, *, param: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status


class InvalidDiffusionRequest(DiffusionError, ValueError):
    """The request asks for something the runner cannot do (bad size, empty prompt...)."""

    status = 400


class DiffusionUnavailable(DiffusionError):
    """A package or a model this runner needs is missing here; the message says what to install
    or where to point."""

    status = 503

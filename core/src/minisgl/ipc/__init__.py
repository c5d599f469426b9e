"""The data plane between the server process and its engine processes: ZeroMQ sockets
carrying msgspec msgpack frames (see protocol.py), one engine process per replica."""

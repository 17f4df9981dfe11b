"""A recording TCP proxy and a minimal HTTP/2 + gRPC frame parser.

Tests route a real gRPC connection through ``RecordingProxy`` and then
decode exactly what crossed the socket in each direction, so privacy checks
look at the wire, not at what the code intended to send.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, FLAG_PADDED = 0x0, 0x8


class RecordingProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``, recording both directions of each
    connection (``connections``, in the order they were opened)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self.connections: list[tuple[bytearray, bytearray]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def to_server(self) -> bytes:
        """Everything any client sent (for searching; parse one connection at a time)."""
        return b"".join(bytes(sent) for sent, _ in self.connections)

    @property
    def to_client(self) -> bytes:
        return b"".join(bytes(received) for _, received in self.connections)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        sent, received = bytearray(), bytearray()
        self.connections.append((sent, received))

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bytearray
        ) -> None:
            try:
                while data := await src.read(65536):
                    log.extend(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, sent), pipe(up_reader, writer, received))

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def data_by_stream(raw: bytes, *, client_side: bool) -> dict[int, bytes]:
    """Concatenated DATA payloads per HTTP/2 stream id."""
    pos = len(H2_PREFACE) if client_side else 0
    if client_side and not raw.startswith(H2_PREFACE):
        raise ValueError("not an HTTP/2 client stream")
    out: dict[int, bytearray] = defaultdict(bytearray)
    while pos + 9 <= len(raw):
        length = int.from_bytes(raw[pos : pos + 3], "big")
        ftype, flags = raw[pos + 3], raw[pos + 4]
        stream = int.from_bytes(raw[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        payload = raw[pos + 9 : pos + 9 + length]
        pos += 9 + length
        if ftype == DATA:
            if flags & FLAG_PADDED:
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            out[stream].extend(payload)
    return {k: bytes(v) for k, v in out.items()}


def grpc_messages(data: bytes, message_type: Any) -> list[Any]:
    """Split a gRPC length-prefixed stream and parse each message."""
    msgs = []
    pos = 0
    while pos < len(data):
        compressed = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        if compressed:
            raise ValueError("compressed gRPC messages are not expected")
        msg = message_type()
        msg.ParseFromString(data[pos + 5 : pos + 5 + length])
        msgs.append(msg)
        pos += 5 + length
    return msgs

"""gRPC transport settings both parties share: limits, keepalive, local hosts, TLS files.

The brand node (``server/``) and the partner SDK (``client/``) both import
this module, so a limit is defined once and the two ends agree on it. Nothing
here opens a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Hosts that never leave this machine: the only ones plaintext is allowed to.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# Chunks stay far below this (a PSI chunk is 8192 points, 256 KiB); it bounds
# what a misbehaving peer can make the other side buffer for one message.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# Pings every 30 s find a dead peer on an idle stream (a session can sit idle
# while the other side computes) well before the resume window closes.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000

CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY = (
    "ca.pem",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
)


def is_local(host: str) -> bool:
    """Whether ``host`` (a bind address, or the host part of HOST:PORT) is loopback."""
    return host in LOCAL_HOSTS


def host_of(target: str) -> str:
    """The host part of a gRPC ``HOST:PORT`` target (IPv6 in brackets)."""
    return target.rsplit(":", 1)[0]


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options of the partner's (and the brand's upload tool's) channels."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options of the brand node's server: its own pings, and it tolerates the clients'."""
    return [
        *channel_options(max_message_bytes),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients ping every KEEPALIVE_TIME_MS; a stricter server would answer
        # with GOAWAY "too_many_pings".
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 3),
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes: the CA both sides trust, and this side's certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)  # a private key never reaches a log


def load_tls(tls_dir: Path, *, server: bool) -> TlsFiles:
    """The files ``cleanroom certs`` wrote, for the server or the client side."""
    cert, key = (SERVER_CERT, SERVER_KEY) if server else (CLIENT_CERT, CLIENT_KEY)
    missing = [n for n in (CA_CERT, cert, key) if not (tls_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{tls_dir} lacks {', '.join(missing)};"
            f" create them with `cleanroom certs --out {tls_dir}`"
        )
    return TlsFiles(
        (tls_dir / CA_CERT).read_bytes(),
        (tls_dir / cert).read_bytes(),
        (tls_dir / key).read_bytes(),
    )

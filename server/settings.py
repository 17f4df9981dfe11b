"""Brand-node settings (pydantic-settings: flags, then CLEANROOM_* env vars)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cleanroom.proto.transport import MAX_MESSAGE_BYTES


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLEANROOM_")

    data_dir: Path = Path("cleanroom-data")
    # Defaults to SQLite inside data_dir; a postgresql+psycopg:// URL works too.
    database_url: str | None = None
    host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    http_port: int = Field(8080, ge=0, le=65535)
    tls_dir: Path | None = None
    workers: int | None = Field(None, ge=1)  # crypto worker processes; default all cores
    # The crypto on a Dask cluster instead: a scheduler address, or local:N (N workers here).
    dask_scheduler: str | None = None
    chunk_size: int = Field(8192, ge=16, le=65536)  # points per PSI chunk (256 KiB)
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1024 * 1024)
    resume_seconds: float = Field(600.0, gt=0)
    # Jobs (PSI sessions, attribution, lookalike and scoring runs) at once: in all (default
    # two per core, at least 4) and per partner (default half of that).
    max_sessions: int | None = Field(None, ge=1)
    max_partner_sessions: int | None = Field(None, ge=1)
    serve_http: bool = True

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cleanroom.db').resolve()}"

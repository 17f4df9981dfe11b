"""The ``cleanroom`` command line (typer + rich), one module per audience:

``node`` (serve, tenant, certs; run on the brand node's machine), ``brand``
(audience, conversions, policy), ``partner`` (match, overlap, attribute),
``marketer`` (report) and ``demo`` (demo, synth).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated

import typer

from cleanroom.client.cli import brand, demo, marketer, node, partner

app = typer.Typer(
    name="cleanroom",
    help="Privacy-preserving audience clean room: PSI matching and closed-loop attribution"
    " between a brand and its media partners.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for _audience in (node, brand, partner, marketer, demo):
    _audience.register(app)


class LogFormat(StrEnum):
    AUTO = "auto"
    TEXT = "text"
    JSON = "json"


@app.callback()
def _options(
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="CLEANROOM_LOG_FORMAT",
            help="Logs on stderr: text on a terminal and JSON lines otherwise (auto), or either.",
        ),
    ] = LogFormat.AUTO,
) -> None:
    from cleanroom.server.logs import configure

    configure(logging.WARNING, fmt=log_format.value)


def main() -> None:
    app()

"""The ``cleanroom`` command line (typer + rich), one module per audience:

``node`` (serve, tenant, certs; run on the brand node's machine), ``brand``
(audience, conversions, policy), ``partner`` (match, overlap, attribute),
``marketer`` (report) and ``demo`` (demo, synth).
"""

from __future__ import annotations

import logging

import typer

from cleanroom.client.cli import brand, demo, marketer, node, partner

app = typer.Typer(
    name="cleanroom",
    help="Privacy-preserving audience clean room: PSI matching between a brand and media partners.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for _audience in (node, brand, partner, marketer, demo):
    _audience.register(app)


def main() -> None:
    from cleanroom.server.logs import configure

    configure(logging.WARNING)
    app()

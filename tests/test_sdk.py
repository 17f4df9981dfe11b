"""The partner SDK's public surface: what ``cleanroom.client`` exports and what it pulls in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cleanroom.client as sdk


def test_every_export_resolves_and_is_listed() -> None:
    assert sorted(sdk.__all__) == sorted(sdk._EXPORTS)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name
    assert "Connection" in dir(sdk)


def test_the_sdk_imports_nothing_of_the_brand_node() -> None:
    """A partner installs the same package, but its process never loads the node's code."""
    script = (
        "import json, sys\n"
        "import cleanroom.client as c\n"
        "for name in c.__all__: getattr(c, name)\n"
        "import cleanroom.client.attribution, cleanroom.client.sdk\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cleanroom.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(done.stdout)
    assert "cleanroom.client.sdk" in loaded and "cleanroom.client.attribution" in loaded
    assert [m for m in loaded if m.startswith("cleanroom.server")] == []


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        sdk.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018

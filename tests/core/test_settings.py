"""Every setting is read from its environment variable and documented in one table."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from core.settings import ConfigError, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    doc = DOC.read_text()
    missing = [f.name.upper() for f in fields(Settings) if f"`{f.name.upper()}`" not in doc]
    assert missing == []


def test_settings_come_from_the_environment() -> None:
    s = Settings.from_env({
        "PORT": "9000", "ALLOW_PRIVATE_REGISTRIES": "1", "INSECURE_REGISTRIES": "a:5000, B:1",
        "LEASE_SECONDS": "2.5",
    })
    assert (s.port, s.allow_private_registries, s.lease_seconds) == (9000, True, 2.5)
    assert s.insecure_registries == frozenset({"a:5000", "b:1"})


@pytest.mark.parametrize(("name", "value"), [("PORT", "eighty"), ("ALLOW_PRIVATE_REGISTRIES", "maybe")])
def test_a_malformed_setting_names_itself(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})

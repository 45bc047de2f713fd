"""Fixtures of the operations tests: the real and the fake registry of the worker tests."""

from __future__ import annotations

from tests.worker.conftest import fake_registry, registry

__all__ = ["fake_registry", "registry"]

"""Registry I/O: the async client for the registry HTTP API V2 / OCI distribution."""

from worker.registry.client import RegistryClient, TagResolution, Target
from worker.registry.errors import (
    ForbiddenTargetError,
    ManifestNotFoundError,
    RateLimitedError,
    RegistryAuthError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailableError,
    RepositoryNotFoundError,
)
from worker.registry.guard import Guard, make_session
from worker.registry.manifests import Layer

__all__ = [
    "ForbiddenTargetError",
    "Guard",
    "Layer",
    "ManifestNotFoundError",
    "RateLimitedError",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryError",
    "RegistryProtocolError",
    "RegistryUnavailableError",
    "RepositoryNotFoundError",
    "TagResolution",
    "Target",
    "make_session",
]

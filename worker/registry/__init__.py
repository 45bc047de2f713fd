"""Registry I/O: the async client for the registry HTTP API V2 / OCI distribution."""

from worker.registry.client import RegistryClient, TagList, Target
from worker.registry.errors import (
    BlobNotFoundError,
    ForbiddenTargetError,
    HostBusyError,
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
from worker.registry.resolve import TagResolution

__all__ = [
    "BlobNotFoundError",
    "ForbiddenTargetError",
    "Guard",
    "HostBusyError",
    "Layer",
    "ManifestNotFoundError",
    "RateLimitedError",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryError",
    "RegistryProtocolError",
    "RegistryUnavailableError",
    "RepositoryNotFoundError",
    "TagList",
    "TagResolution",
    "Target",
    "make_session",
]

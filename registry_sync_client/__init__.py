"""A typed Python client of registry-sync's Tutum v1 Images API, and the `tutum` command.

It depends on the HTTP contract only (never on the service's own packages):

    from registry_sync_client import Client, AsyncClient, NotFoundError

See docs/client.md for examples.
"""

from registry_sync_client.blocking import Client, Interrupted
from registry_sync_client.client import AsyncClient, image_filters, parse_reference
from registry_sync_client.config import Settings, load_settings, write_config_file
from registry_sync_client.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ClientError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ProtocolError,
    ServerError,
    ThrottledError,
    UnavailableError,
    UnreachableError,
)
from registry_sync_client.models import Event, Image, Layer, Page, Registry, SyncStatus, Tag
from registry_sync_client.notify_models import Delivery, HistoryEntry, Subscription
from registry_sync_client.stream import EventStream

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthError",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "Delivery",
    "Event",
    "EventStream",
    "ForbiddenError",
    "HistoryEntry",
    "Image",
    "Interrupted",
    "Layer",
    "NotFoundError",
    "Page",
    "ProtocolError",
    "Registry",
    "ServerError",
    "Settings",
    "Subscription",
    "SyncStatus",
    "Tag",
    "ThrottledError",
    "UnavailableError",
    "UnreachableError",
    "image_filters",
    "load_settings",
    "parse_reference",
    "write_config_file",
]

"""Typed application state keys."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import asyncpg
from aiohttp import web
from celery import Celery

from core.crypto import CredentialBox
from core.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
CELERY = web.AppKey("celery", Celery)
PUBLISHER = web.AppKey("publisher", ThreadPoolExecutor)
CREDENTIAL_BOX = web.AppKey("credential_box", CredentialBox)
MAX_BODY = web.AppKey("max_body", int)
# LOG_LEVEL lets the `request.done` lines (info) through (the settings configure_logging reads)
LOG_REQUESTS = web.AppKey("log_requests", bool)

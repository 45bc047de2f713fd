"""Layers (image configs) and the repositories that proved holding them, for both paths that
read configs: the sync and the webhook enrichment.

A layer row is content-addressed and never changes. A `layer_sources` row says that a
registry repository served or confirmed that config blob (SPEC §1 proof of access); a tag
may point at the layer only when its image's registry and repository have that row, which
`record` writes in the same transaction as the tags that need it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from worker.registry import Layer


@dataclass(frozen=True)
class LayerWrite:
    """The Tutum `layer` shape, stored ready to serve."""

    config_digest: str
    author: str
    created: datetime | None
    entrypoint: str
    run_command: str
    envvars: list[dict[str, str]]
    labels: list[dict[str, str]]
    ports: list[dict[str, object]]
    volumes: list[dict[str, str]]


def layer_write(digest: str, layer: Layer) -> LayerWrite:
    return LayerWrite(
        config_digest=digest,
        author=layer.author,
        created=layer.created,
        entrypoint=layer.entrypoint,
        run_command=layer.run_command,
        envvars=[{"key": k, "value": v} for k, v in layer.envvars],
        labels=[{"key": k, "value": v} for k, v in layer.labels],
        ports=[{"port": p, "protocol": proto} for p, proto in layer.ports],
        volumes=[{"container_path": v} for v in layer.volumes],
    )


INSERT_LAYERS_SQL = """
INSERT INTO layers (config_digest, author, created, entrypoint, run_command, envvars, labels, ports, volumes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (config_digest) DO NOTHING
"""

INSERT_SOURCES_SQL = """
INSERT INTO layer_sources (registry_id, repository, config_digest)
SELECT $1, $2, d FROM unnest($3::text[]) AS d
ON CONFLICT ON CONSTRAINT layer_sources_pkey DO NOTHING
"""


async def record(
    conn: asyncpg.Connection, registry_id: int, repository: str, layers: Iterable[LayerWrite],
    proven: Iterable[str],
) -> None:
    """Store new layers, and that this registry repository holds the `proven` configs (every
    config digest a tag of this repository is about to point at). In the caller's
    transaction, after it locked its images and before the tags (worker/locks.py). Rows go in
    digest order: two writers inserting the same new configs never wait for each other
    crosswise."""
    rows = [
        (la.config_digest, la.author, la.created, la.entrypoint, la.run_command, la.envvars,
         la.labels, la.ports, la.volumes)
        for la in sorted(layers, key=lambda la: la.config_digest)
    ]
    if rows:
        await conn.executemany(INSERT_LAYERS_SQL, rows)
    digests = sorted(set(proven))
    if digests:
        await conn.execute(INSERT_SOURCES_SQL, registry_id, repository, digests)


PROVEN_CONFIGS_SQL = """
SELECT config_digest FROM layer_sources
 WHERE registry_id = $1 AND repository = $2
 ORDER BY confirmed_at DESC
 LIMIT $3
"""


async def proven_configs(
    conn: asyncpg.Pool | asyncpg.Connection, registry_id: int, repository: str, limit: int,
    also: Sequence[str] = (),
) -> frozenset[str]:
    """Config digests this registry repository served or confirmed: the newest `limit`, plus
    `also` (the configs its tags point at, proven by the rule above)."""
    rows = await conn.fetch(PROVEN_CONFIGS_SQL, registry_id, repository, limit)
    return frozenset(r[0] for r in rows) | frozenset(also)

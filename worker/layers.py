"""Layers (image configs) and the repositories that proved holding them, for both paths that
read configs: the sync and the webhook enrichment.

A layer row is content-addressed and never changes. A `layer_sources` row with
`proven_by_content` says that a registry repository served that config blob and the bytes
hashed to its digest (SPEC §1: a proof is content, not a claim); a tag may point at the
layer only when its image's registry and repository have that row, which `record` writes in
the same transaction as the tags that need it. Rows without it were written before that rule
(a `HEAD` answered 200 was taken as proof then): they count for nothing here, and the next
sync of a tag that points at such a config fetches the blob once (worker/sync.py).
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
INSERT INTO layer_sources AS s (registry_id, repository, config_digest, proven_by_content)
SELECT $1, $2, d, true FROM unnest($3::text[]) AS d
ON CONFLICT ON CONSTRAINT layer_sources_pkey DO UPDATE
   SET proven_by_content = true, confirmed_at = now()
 WHERE NOT s.proven_by_content
"""


async def record(
    conn: asyncpg.Connection, registry_id: int, repository: str, layers: Iterable[LayerWrite],
    proven: Iterable[str],
) -> None:
    """Store new layers, and that this registry repository holds the `proven` configs (every
    config digest a tag of this repository is about to point at, each one served by the
    repository with bytes that hash to it: resolve.proven_config). In the caller's
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
(SELECT config_digest FROM layer_sources
  WHERE registry_id = $1 AND repository = $2 AND proven_by_content
  ORDER BY confirmed_at DESC
  LIMIT $3)
UNION
SELECT config_digest FROM layer_sources
 WHERE registry_id = $1 AND repository = $2 AND proven_by_content AND config_digest = ANY ($4::text[])
"""


async def proven_configs(
    conn: asyncpg.Pool | asyncpg.Connection, registry_id: int, repository: str, limit: int,
    also: Sequence[str] = (),
) -> frozenset[str]:
    """Config digests this registry repository proved holding by content: the newest
    `limit`, and those of `also` (the configs its tags point at) that it proved."""
    rows = await conn.fetch(PROVEN_CONFIGS_SQL, registry_id, repository, limit, sorted(set(also)))
    return frozenset(r[0] for r in rows)

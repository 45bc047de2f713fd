"""The Tutum v1 wire format, built in one place (SPEC §1)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from api.pages import Result
from api.params import Page

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

API = "/api/v1"


def rfc2822(value: datetime | None) -> str | None:
    """`Fri, 8 Nov 2013 00:22:26 +0000` (UTC, day without a leading zero, as Tutum wrote it)."""
    if value is None:
        return None
    v = value if value.tzinfo is UTC else value.astimezone(UTC)  # asyncpg gives UTC already
    return (f"{_DAYS[v.weekday()]}, {v.day} {_MONTHS[v.month - 1]} {v.year} "
            f"{v.hour:02d}:{v.minute:02d}:{v.second:02d} +0000")


def image_uri(name: str) -> str:
    return f"{API}/image/{name}/"


def tag_uri(image_name: str, tag: str) -> str:
    return f"{API}/image/{image_name}/tag/{tag}/"


def registry_uri(host: str) -> str:
    return f"{API}/registry/{host}/"


def layer_uri(docker_id: str) -> str:
    return f"{API}/layer/{docker_id}/"


def image(row: Mapping[str, Any], tags: Sequence[str] | None = None) -> dict[str, Any]:
    """An image object; its `tags` are the tag URIs of `tags` (default: the row's tag names)."""
    name = row["name"]
    return {
        "resource_uri": image_uri(name),
        "name": name,
        "description": row["description"],
        "icon_url": row["icon_url"],
        "state": row["state"],
        "star_count": row["star_count"],
        "jumpstart": row["jumpstart"],
        "in_use": row["in_use"],
        "categories": [{"name": c} for c in row["categories"]],
        "is_private_image": row["is_private_image"],
        "public_url": row["public_url"],
        "registry": registry_uri(row["registry_host"]),
        "last_build_date": rfc2822(row["last_build_date"]),
        "tags": [tag_uri(name, t) for t in (row["tags"] if tags is None else tags)],
        "build_source": None,
    }


def layer(row: Mapping[str, Any]) -> dict[str, Any] | None:
    digest = row["config_digest"]
    if digest is None or row["layer_fetched_at"] is None:
        return None
    docker_id = digest.split(":", 1)[1]
    return {
        "author": row["author"],
        "creation": rfc2822(row["created"]),
        "docker_id": docker_id,
        "entrypoint": row["entrypoint"],
        "run_command": row["run_command"],
        "envvars": row["envvars"],
        "labels": row["labels"],
        "ports": row["ports"],
        "volumes": row["volumes"],
        "resource_uri": layer_uri(docker_id),
    }


def tag(image_name: str, row: Mapping[str, Any]) -> dict[str, Any]:
    t = row["tag_name"]
    return {
        "resource_uri": tag_uri(image_name, t),
        "name": t,
        "full_name": f"{image_name}:{t}",
        "image": image_uri(image_name),
        "state": row["tag_state"],
        "buildable": row["buildable"],
        "layer": layer(row),
    }


def registry(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "resource_uri": registry_uri(row["host"]),
        "name": row["name"],
        "host": row["host"],
        "icon_url": row["icon_url"],
        "is_ssl": row["is_ssl"],
        "is_tutum_registry": row["is_tutum_registry"],
    }


def page_link(path: str, params: Sequence[tuple[str, str]], limit: int, offset: int,
              cursor: tuple[str, str] | None = None) -> str:
    pairs = [*params, ("limit", str(limit)), ("offset", str(offset))]
    if cursor is not None:
        pairs.append(cursor)
    return f"{path}?{urlencode(pairs, quote_via=quote)}"


def envelope(objects: Iterable[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The `meta/objects` list envelope, `meta` from list_meta (first: api/list_body.py writes
    the same bytes piece by piece)."""
    return {"meta": meta, "objects": list(objects)}


def list_meta(
    *,
    path: str,
    params: Sequence[tuple[str, str]],
    page: Page,
    result: Result,
    key: Callable[[Mapping[str, Any]], str],
) -> dict[str, Any]:
    """The `meta` of a list page; next/previous keep the caller's filters.

    A page the caller addressed by `offset` links to the neighbouring offsets (what such a
    client computes itself). Any other page links by cursor, `after` its last row or `before`
    its first, with `limit` and `offset` kept for clients that read them: following `next`
    costs the same on every page, and rows inserted or deleted meanwhile never make a walk
    repeat or skip a row that stays.
    """
    limit, offset, rows = page.limit, result.offset, result.rows
    if page.by_offset:
        nxt = page_link(path, params, limit, offset + limit) if result.more else None
        prev = page_link(path, params, limit, max(offset - limit, 0)) if offset > 0 else None
    else:
        nxt = (page_link(path, params, limit, offset + limit, ("after", key(rows[-1])))
               if result.more and rows else None)
        before = ("before", key(rows[0])) if rows else None
        prev = None if result.first else page_link(path, params, limit, max(offset - limit, 0), before)
    return {"limit": limit, "offset": offset, "total_count": result.total, "next": nxt, "previous": prev}


def offset_envelope(objects: list[dict[str, Any]], *, path: str, limit: int, offset: int,
                    total: int) -> dict[str, Any]:
    """The list envelope of a short list (an account's subscriptions, a delivery log), paged
    by offset only."""
    nxt = page_link(path, [], limit, offset + limit) if offset + len(objects) < total else None
    prev = page_link(path, [], limit, max(offset - limit, 0)) if offset > 0 else None
    return {
        "meta": {"limit": limit, "offset": offset, "total_count": total, "next": nxt, "previous": prev},
        "objects": objects,
    }


def event(payload: Mapping[str, Any]) -> dict[str, Any]:
    """One events-stream message (SPEC §5) from a trigger's NOTIFY payload (schema.sql:
    `type`, `action`, `name`, `tag` for tags, `state`, `at` as epoch seconds)."""
    name = payload["name"]
    if payload["type"] == "imagetag":
        uri, parents = tag_uri(name, payload["tag"]), [image_uri(name)]
    else:
        uri, parents = image_uri(name), []
    return {
        "type": payload["type"],
        "action": payload["action"],
        "resource_uri": uri,
        "state": payload["state"],
        "parents": parents,
        "datetime": rfc2822(datetime.fromtimestamp(float(payload["at"]), UTC)),
    }


def history_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """One digest a tag pointed at, and when (`until` null: it still does)."""
    return {
        "digest": row["digest"],
        "from": rfc2822(row["valid_from"]),
        "until": rfc2822(row["valid_until"]),
        "observed_via": row["observed_via"],
    }


def subscription_uri(subscription_id: int) -> str:
    return f"{API}/subscription/{subscription_id}/"


def subscription(row: Mapping[str, Any], secret: str | None = None) -> dict[str, Any]:
    """A subscription; `secret` (`whsec_…`) only in the answers that make one."""
    out = {
        "id": row["id"],
        "resource_uri": subscription_uri(row["id"]),
        "url": row["url"],
        "events": list(row["events"]),
        "image": row["image"],
        "tag_pattern": row["tag_pattern"],
        "enabled": row["disabled_at"] is None,
        "disabled_reason": row["disabled_reason"],
        "created_at": rfc2822(row["created_at"]),
        "deliveries": f"{subscription_uri(row['id'])}delivery/",
    }
    if secret is not None:
        out["secret"] = secret
    return out


def delivery(row: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A delivery of one event to one subscription, with each of its attempts (oldest first)."""
    uri = f"{subscription_uri(row['subscription_id'])}delivery/{row['id']}/"
    return {
        "id": row["id"],
        "resource_uri": uri,
        "webhook_id": row["msg_id"],
        "type": row["type"],
        "data": row["data"],
        "status": row["status"],
        "created_at": rfc2822(row["created_at"]),
        "next_attempt_at": rfc2822(row["next_attempt_at"]) if row["status"] == "pending" else None,
        "finished_at": rfc2822(row["finished_at"]),
        "note": row["note"],
        "attempts": [
            {
                "at": rfc2822(a["attempted_at"]),
                "status": a["status_code"],
                "duration_ms": a["duration_ms"],
                "response": a["response"],
                "error": a["error"],
            }
            for a in attempts
        ],
        "redeliver": f"{uri}redeliver/",
    }


def build_status(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `builds` part of `…/sync/` (an extension): the last read of the image's builds from
    its registry's build API (SYNC_STATUS_SQL's `builds_*` columns; recent builds keep ISO 8601
    dates, written here as RFC 2822). Never the token, only whether there is one."""
    return {
        "build_token": bool(row["has_build_token"]),
        "read_at": rfc2822(row["builds_read_at"]),
        "error": row["builds_error"],
        "error_at": rfc2822(row["builds_error_at"]),
        "next_poll_at": rfc2822(row["builds_due_at"]),
        "recent": [
            {**b, "started": _iso_rfc2822(b.get("started")), "ended_at": _iso_rfc2822(b.get("ended_at"))}
            for b in row["builds_recent"] or ()
        ],
    }


def _iso_rfc2822(value: str | None) -> str | None:
    return rfc2822(datetime.fromisoformat(value)) if value else None

"""How the `tutum` command prints: the old CLI's plain tables, JSON, key/value details, and
one line per event."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from registry_sync_client.models import Event

Cell = str | int | None


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    """A table laid out as the old CLI printed it (tabulate's "plain" format): every column at
    least two wider than its header, two spaces between columns, text left-aligned, numbers
    (and their header) right-aligned, no trailing spaces; None prints as nothing."""
    body = [["" if c is None else c for c in row] for row in rows]
    cols = len(headers)
    numeric = [bool(body) and all(isinstance(r[i], int) for r in body) for i in range(cols)]
    text = [[str(c) for c in row] for row in body]
    widths = [max([len(headers[i]) + 2, *(len(r[i]) for r in text)]) for i in range(cols)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(r) for r in text)])


def to_json(value: Any) -> str:
    """Pretty JSON, as `tutum … inspect` printed it."""
    return json.dumps(value, indent=2)


def to_json_line(value: Any) -> str:
    """Compact JSON on one line (a stream of objects)."""
    return json.dumps(value, separators=(",", ":"))


def yes_no(flag: object) -> str:
    return "yes" if flag else "no"


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(", ", ": "))


def _inline(item: Mapping[str, Any]) -> str:
    return "  ".join(f"{k}={_scalar(v)}" for k, v in item.items())


def value_lines(value: Any) -> list[str]:
    """A JSON value as one or more lines: lists one item per line, objects as `key=value`."""
    if isinstance(value, list):
        if not value:
            return ["-"]
        return [_inline(v) if isinstance(v, dict) else _scalar(v) for v in value]
    if isinstance(value, dict):
        if not value:
            return ["-"]
        return [f"{k}: {line}" if i == 0 else f"{' ' * (len(str(k)) + 2)}{line}"
                for k, v in value.items() for i, line in enumerate(value_lines(v))]
    return [_scalar(value)]


def details(fields: Mapping[str, Any]) -> str:
    """Every field of an object, one per line (`name   value`), whatever fields it has: a
    field added to the API later prints too. Lists and objects continue on indented lines."""
    if not fields:
        return ""
    width = max(len(k) for k in fields) + 2
    out: list[str] = []
    for key, value in fields.items():
        for i, line in enumerate(value_lines(value)):
            out.append(f"{(key if i == 0 else ''):<{width}}{line}".rstrip())
    return "\n".join(out)


EVENT_HEADERS = ("TIME", "STATE", "CHANGE", "NAME")
_EVENT_WIDTHS = (31, 8, 13)  # an RFC 2822 date, "Building", "image updated"
_VERBS = {"create": "created", "update": "updated", "delete": "deleted"}


def event_header() -> str:
    return event_row(EVENT_HEADERS)


def event_row(cells: Sequence[str]) -> str:
    padded = [c.ljust(w) for c, w in zip(cells, _EVENT_WIDTHS, strict=False)]
    return "  ".join([*padded, *cells[len(_EVENT_WIDTHS):]]).rstrip()


def event_line(event: Event) -> str:
    """`TIME  STATE  CHANGE  NAME[:TAG]` for one event of the stream."""
    kind = "tag" if event.type == "imagetag" else event.type
    change = f"{kind} {_VERBS.get(event.action, event.action)}"
    when = event.raw.get("datetime") or "-"
    return event_row([str(when), event.state or "-", change, event.full_name])

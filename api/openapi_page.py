"""`/docs`: the OpenAPI document rendered server-side as one self-contained HTML page.

No scripts, no fonts, no CDN (the service may run where nothing outside is reachable): a
table of contents, then each operation with its parameters, body, responses and schemas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de}
.op{border:1px solid #d0d7de;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.m{display:inline-block;min-width:4.5rem;font-weight:700;font-family:monospace}
.get{color:#0969da}.post{color:#1a7f37}.patch{color:#9a6700}.delete{color:#cf222e}
code,pre{font-family:ui-monospace,monospace;font-size:13px;background:#f6f8fa}
pre{padding:.6rem;overflow-x:auto;border-radius:6px}
table{border-collapse:collapse;margin:.4rem 0} td,th{border:1px solid #d0d7de;padding:.2rem .5rem;text-align:left}
"""


def render(doc: dict[str, Any], esc: Callable[[str], str]) -> str:
    """The page for `doc`; `esc` escapes text for HTML (html.escape)."""
    info = doc["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(info['title'])} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(info['title'])} API</h1><p>{esc(info.get('description', ''))}</p>",
        '<p>Machine-readable: <a href="/api/v1/openapi.json"><code>/api/v1/openapi.json</code></a> '
        "(OpenAPI 3.1). Authenticate with <code>Authorization: ApiKey &lt;user&gt;:&lt;key&gt;</code> "
        "or HTTP Basic, except where an operation says otherwise.</p><h2>Operations</h2><ul>",
    ]
    ops = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    for i, (path, method, op) in enumerate(ops):
        parts.append(f'<li><a href="#op{i}"><span class="m {method}">{method.upper()}</span>'
                     f"<code>{esc(path)}</code></a> {esc(op['summary'])}</li>")
    parts.append("</ul>")
    for i, (path, method, op) in enumerate(ops):
        parts.append(_operation(i, path, method, op, esc))
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f'<h3 id="schema-{esc(name)}">{esc(name)}</h3>{_json(schema, esc)}')
    parts.append("</body></html>")
    return "".join(parts)


def _operation(i: int, path: str, method: str, op: dict[str, Any], esc: Callable[[str], str]) -> str:
    out = [f'<div class="op" id="op{i}"><span class="m {method}">{method.upper()}</span>'
           f"<code>{esc(path)}</code><p>{esc(op['summary'])}</p>"]
    if op.get("description"):
        out.append(f"<p>{esc(op['description'])}</p>")
    if op.get("security") == []:
        out.append("<p><em>No API credentials.</em></p>")
    elif "security" in op:
        schemes = ", ".join(k for s in op["security"] for k in s)
        out.append(f"<p><em>Authentication: {esc(schemes)}.</em></p>")
    params = op.get("parameters", [])
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>meaning</th></tr>")
        for p in params:
            name = p.get("name") or p["$ref"].rsplit("/", 1)[-1]
            where = p.get("in", "see schema")
            out.append(f"<tr><td><code>{esc(name)}</code></td><td>{esc(where)}</td>"
                       f"<td>{esc(p.get('description', ''))}</td></tr>")
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        for ctype, media in body["content"].items():
            out.append(f"<p>Body <code>{esc(ctype)}</code>: {_schema_link(media['schema'], esc)}</p>")
    out.append("<table><tr><th>status</th><th>answer</th></tr>")
    for status, resp in op["responses"].items():
        if "$ref" in resp:
            text = f"error: {esc(resp['$ref'].rsplit('/', 1)[-1])} (<code>Error</code> body)"
        else:
            text = esc(resp.get("description", ""))
            for ctype, media in resp.get("content", {}).items():
                text += f" — <code>{esc(ctype)}</code> {_schema_link(media.get('schema', {}), esc)}"
        out.append(f"<tr><td>{esc(status)}</td><td>{text}</td></tr>")
    out.append("</table></div>")
    return "".join(out)


def _schema_link(schema: dict[str, Any], esc: Callable[[str], str]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{esc(name)}"><code>{esc(name)}</code></a>'
    return f"<code>{esc(orjson.dumps(schema).decode())}</code>"


def _json(value: Any, esc: Callable[[str], str]) -> str:
    return f"<pre>{esc(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())}</pre>"

"""A token server following the distribution token-auth spec, for the real docker-registry.

Tokens are ES256 JWTs whose header carries the signing certificate in `x5c`; the same
self-signed certificate is the registry's `auth.token.rootcertbundle`, which is what
distribution 2.8 verifies the chain against.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support import ThreadedApp


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """`GET /token?service=…&scope=repository:<name>:<actions>` → `{"token", "access_token",
    "expires_in", "issued_at"}`.

    Basic credentials must match `users`; wrong ones get 401. An authenticated user is
    granted the actions it asks for; an anonymous caller only `pull` on `public_repos`.
    `requests` records (username or None, scope) of every token request.
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        service: str = "registry-test",
        issuer: str = "registry-sync-test-issuer",
        expires_in: int | None = 300,
        public_repos: Iterable[str] = (),
    ) -> None:
        self.users = dict(users or {})
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.public_repos = set(public_repos)
        self.requests: list[tuple[str | None, str]] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry-sync test token")])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._app = ThreadedApp(self._make_app)

    @property
    def url(self) -> str:
        return self._app.url

    @property
    def realm(self) -> str:
        return f"{self._app.url}/token"

    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def write_cert(self, path: Path) -> Path:
        path.write_bytes(self.cert_pem())
        return path

    def start(self) -> TokenServer:
        self._app.start()
        return self

    def stop(self) -> None:
        self._app.stop()

    def issue(self, subject: str, access: list[dict[str, object]], expires_in: int = 300) -> str:
        """A signed JWT granting `access` (distribution's claim set)."""
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}"
        der_sig = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"

    def _user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise web.HTTPUnauthorized(text="malformed credentials") from None
        if scheme.lower() != "basic" or self.users.get(user) != password or not user:
            raise web.HTTPUnauthorized(
                text=orjson.dumps({"details": "incorrect username or password"}).decode(),
                content_type="application/json",
            )
        return user

    async def _token(self, request: web.Request) -> web.Response:
        user = self._user(request)
        scopes = request.query.getall("scope", [])
        self.requests.append((user, " ".join(scopes)))
        access: list[dict[str, object]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = [a for a in actions.split(",") if a]
            granted = wanted if user else (["pull"] if name in self.public_repos else [])
            granted = [a for a in wanted if a in granted]
            if granted:
                access.append({"type": "repository", "name": name, "actions": granted})
        lifetime = self.expires_in or 60
        token = self.issue(user or "", access, lifetime)
        body: dict[str, object] = {
            "token": token,
            "access_token": token,
            "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        }
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._token)
        return app

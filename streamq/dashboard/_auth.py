"""Who may look, who may change things, and the CSRF token that binds a form to its viewer.

Three ways in, chosen when the app is made:

- no authentication: anyone who reaches the port reads (the command binds 127.0.0.1 by default), and
  nobody writes: create_app refuses allow_writes without one of the two below;
- a token: `Authorization: Bearer TOKEN` (scripts), or the login form, which sets an HttpOnly,
  SameSite=Strict cookie holding an HMAC of the token (never the token itself);
- basic auth (`user:password`), which every browser speaks.

Every POST that changes something carries a CSRF token: an HMAC, under a key drawn when the app starts,
of who the viewer is (the token's session or the basic-auth user). Another site can make a browser send
the viewer's credentials (basic auth is sent on every request) but cannot read a page to learn the token,
and the Content-Security-Policy forbids framing. A POST whose Origin header names another host is refused
as well. Secrets are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ._http import Request

SESSION_COOKIE = "streamq_dashboard"
_SESSION_LABEL = b"streamq-dashboard-session"


@dataclass(frozen=True)
class Auth:
    token: str | None = None
    basic: tuple[str, str] | None = None  # (user, password)
    secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)  # signs the CSRF tokens

    def __post_init__(self) -> None:
        if self.token is not None and self.basic is not None:
            raise ConfigurationError("give a token or basic auth, not both")
        if self.token is not None and len(self.token) < 8:
            raise ConfigurationError("the dashboard token must be at least 8 characters")
        if self.basic is not None and (not self.basic[0] or not self.basic[1] or ":" in self.basic[0]):
            raise ConfigurationError("basic auth needs a user (without ':') and a password: user:password")

    @property
    def required(self) -> bool:
        return self.token is not None or self.basic is not None

    def session_value(self) -> str:
        """What the login cookie holds: an HMAC of the token, which the cookie never reveals."""
        assert self.token is not None
        return hmac.new(self.token.encode(), _SESSION_LABEL, hashlib.sha256).hexdigest()

    def check_token(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def viewer(self, request: Request) -> str | None:
        """Who the request comes from ("anonymous" when no authentication is set up), or None when it
        does not authenticate."""
        if not self.required:
            return "anonymous"
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if self.token is not None:
            if scheme.lower() == "bearer" and self.check_token(credentials.strip()):
                return "token"
            cookie = request.cookies().get(SESSION_COOKIE, "")
            if cookie and hmac.compare_digest(cookie.encode(), self.session_value().encode()):
                return "token"
            return None
        assert self.basic is not None
        if scheme.lower() != "basic":
            return None
        try:
            user, colon, password = (
                base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        user_ok = hmac.compare_digest(user.encode(), self.basic[0].encode())
        password_ok = hmac.compare_digest(password.encode(), self.basic[1].encode())
        return f"basic:{user}" if colon and user_ok and password_ok else None

    def csrf_token(self, viewer: str) -> str:
        return hmac.new(self.secret, b"csrf:" + viewer.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, viewer: str, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf_token(viewer).encode())


def same_origin(request: Request) -> bool:
    """False when the POST says it comes from a page of another host (Origin, else Referer); a request
    naming neither (a script, an old browser) is judged by its CSRF token alone."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()

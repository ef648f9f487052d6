"""A fake Label Studio 1.23.2, for the proxy's tests.

A real aiohttp application: run it with ``aiohttp_server(fake.app())``. It answers what the proxy
touches the way the real server does (see /work/shared/label-studio/BEHAVIOUR.md):

- ``GET /api/annotations/<pk>/`` (also without the slash, and ``06`` is ``6``), plus minimal
  PUT/PATCH/DELETE so tests can assert the proxy never sends them;
- ``POST /api/token/refresh/`` (personal access token -> 5 minute access token);
- ``GET /health``; anything else is Django's HTML 404.

Tests drive it through plain methods: ``add_annotation`` / ``update_annotation`` / ... change
the data, ``issue_personal_access_token`` / ``revoke_*`` change credentials, and ``fail_next`` /
``respond_raw_next`` / ``delay_next`` / ``hold`` inject faults on annotation GETs. Everything it
received is in ``requests``.

Time comes from the injected ``clock`` (seconds since the epoch), so tests move time by hand.
``created_ago`` is rendered by Django's own ``timesince`` (tests/support/django_oracle.py), as Label Studio does.
Where a detail is taken from Label Studio's, Django's, DRF's or simplejwt's source rather than from
BEHAVIOUR.md, a comment says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import secrets
import string
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import MultiMapping

from tests.support.django_oracle import timesince

LS_VERSION = "1.23.2"
DEFAULT_LEGACY_TOKEN = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"
ACCESS_TOKEN_LIFETIME = 300.0
PAT_LIFETIME = 200 * 365 * 86400.0  # Label Studio's "eternity" (jwt_auth.models.JWTSettings)

ADMIN_ID = 1
ADMIN_EMAIL = "admin@example.com"

NOT_AUTHENTICATED = "Authentication credentials were not provided."
INVALID_LEGACY_TOKEN = "Invalid token."
LEGACY_DISABLED = (
    "Authentication token no longer valid: legacy token authentication has been disabled for this organization"
)
NOT_FOUND = "No Annotation matches the given query."
CHECK_PATH = "/api/annotations/0/"  # what the proxy asks for to check Label Studio (proxy/upstream.py)

# DRF sets these from the first authenticator (LS: TokenAuthenticationPhaseout) and, for the
# refresh view, from simplejwt's TokenViewBase.get_authenticate_header.
_ANNOTATION_AUTH_CHALLENGE = "Token"
_REFRESH_AUTH_CHALLENGE = 'Bearer realm="api"'
# DRF's Allow header: the view's methods in http_method_names order.
_ANNOTATION_ALLOW = "GET, PUT, PATCH, DELETE, HEAD, OPTIONS"
_REFRESH_ALLOW = "POST, OPTIONS"
# Django's defaults (SESSION_COOKIE_AGE; SecurityMiddleware), added to every response.
_SESSION_COOKIE_AGE = 14 * 86400
_DJANGO_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_READ_ONLY_FIELDS = frozenset({"id", "created_username", "created_ago", "created_at", "updated_at"})
_HTML_404 = (
    b'<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    b"  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n"
    b"</body>\n</html>\n"
)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # raw path as received, e.g. "/api/annotations/5/"
    query: dict[str, str]
    headers: dict[str, str]  # copy of all request headers (case as received)


@dataclass(frozen=True)
class _Canned:
    """A fault: answer an annotation GET with this instead of the real response."""

    status: int
    body: bytes | None  # None: a Label Studio error body for `status`
    content_type: str
    content_encoding: str | None = None


_RECORDED = web.RequestKey("recorded", RecordedRequest)


# --- Pure helpers ------------------------------------------------------------------------------


def drf_json(data: Any) -> bytes:
    """Render like DRF's JSONRenderer: compact, raw UTF-8, U+2028/U+2029 escaped."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def iso_datetime(moment: datetime) -> str:
    """DRF's DateTimeField: ISO 8601, ``Z`` for UTC, no fraction when microseconds are zero."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_encode(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT, laid out as PyJWT writes it."""
    header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def jwt_claims(token: str, secret: bytes | None) -> dict[str, Any] | None:
    """The claims of a JWT, or None if malformed or (when `secret` is given) not signed with it.

    Expiry is not checked here.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header, payload, signature = parts
    if secret is not None:
        digest = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(signature.encode(), _b64url(digest).encode()):
            return None
    try:
        claims = json.loads(_b64url_decode(payload))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def _wants_expanded_completed_by(query: MultiMapping[str]) -> bool:
    """drf-flex-fields' ``?expand=``: comma-separated names, or a wildcard."""
    names = {name.strip() for value in query.getall("expand", []) for name in value.split(",")}
    return bool(names & {"completed_by", "*", "~all"})


def _completed_by_object(user_id: Any) -> Any:
    """Label Studio's CompletedByDMSerializer for this user id (the admin, or a made-up user)."""
    if not isinstance(user_id, int):
        return user_id
    email = ADMIN_EMAIL if user_id == ADMIN_ID else f"user{user_id}@example.com"
    return {
        "id": user_id,
        "first_name": "",
        "last_name": "",
        "avatar": None,
        "email": email,
        "initials": email[:2],  # User.get_initials() with no names
    }


# --- The fake ------------------------------------------------------------------------------------


class FakeLabelStudio:
    def __init__(
        self,
        *,
        legacy_token: str = DEFAULT_LEGACY_TOKEN,
        legacy_enabled: bool = True,
        access_token_lifetime: float = ACCESS_TOKEN_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.legacy_token = legacy_token
        self.legacy_enabled = legacy_enabled
        self.access_token_lifetime = access_token_lifetime
        self._clock = clock

        self.requests: list[RecordedRequest] = []
        self.checks: list[RecordedRequest] = []  # the proxy's dependency checks (GET /api/annotations/0/)
        self.refresh_calls = 0
        self.refresh_padding = 0  # characters of an extra field in each refresh answer (a misbehaving endpoint)
        self.clock_offset = 0.0  # seconds this Label Studio's clock is ahead of the test's (behind when negative)
        self.refresh_delay = 0.0  # seconds each token refresh takes to answer
        self._refresh_failures: deque[int] = deque()

        self._annotations: dict[int, dict[str, Any]] = {}
        self._next_id = 1

        self._secret = secrets.token_bytes(32)
        self._access_jtis: set[str] = set()
        self._revoked_jtis: set[str] = set()

        self._canned: deque[_Canned] = deque()
        self._delays: deque[float] = deque()
        self._released = asyncio.Event()
        self._released.set()
        self._hold_budget: int | None = None  # how many more arrivals a hold(count) holds; None: all
        self._closing = asyncio.Event()
        self._annotation_gets: list[tuple[int, RecordedRequest]] = []
        self._arrivals = asyncio.Condition()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        for path in ("/api/annotations/{pk:[0-9]+}/", "/api/annotations/{pk:[0-9]+}"):
            app.router.add_route("*", path, self._annotation)
        # Label Studio serves every route with or without the trailing slash, without redirecting.
        for path in ("/api/token/refresh/", "/api/token/refresh"):
            app.router.add_route("*", path, self._token_refresh)
        for path in ("/health", "/health/"):
            app.router.add_get(path, self._health)
        app.router.add_route("*", "/{tail:.*}", self._not_found_page)
        app.on_response_prepare.append(self._add_django_headers)
        app.on_shutdown.append(self._wake_waiters)
        return app

    # --- Data ------------------------------------------------------------------------------------

    def add_annotation(self, **fields: Any) -> dict[str, Any]:
        """Create annotation 1, 2, ... shaped like samples/get-annotation-200.json; `fields` win."""
        annotation_id = self._next_id
        self._next_id += 1
        created = self._now()
        now = iso_datetime(created)
        record: dict[str, Any] = {
            "id": annotation_id,
            "result": [
                {
                    "from_name": "sentiment",
                    "to_name": "text",
                    "type": "choices",
                    "value": {"choices": ["Positive"]},
                }
            ],
            "created_username": f" {ADMIN_EMAIL}, {ADMIN_ID}",
            "created_ago": timesince(created, created),  # as stored; served with a live one
            "completed_by": ADMIN_ID,
            "was_cancelled": False,
            "ground_truth": False,
            "created_at": now,
            "updated_at": now,
            "draft_created_at": None,
            "lead_time": 3.5,
            "import_id": None,
            "last_action": None,
            "bulk_created": False,
            "task": annotation_id,
            "project": 1,
            "updated_by": ADMIN_ID,
            "parent_prediction": None,
            "parent_annotation": None,
            "last_created_by": None,
        }
        record.update(fields)
        self._annotations[annotation_id] = record
        return record

    def annotation(self, annotation_id: int) -> dict[str, Any]:
        """The stored record (created_ago as stored, not as served)."""
        return self._annotations[annotation_id]

    def update_annotation(self, annotation_id: int, **fields: Any) -> dict[str, Any]:
        """A Label Studio save: change `fields` and move updated_at to now (strictly later)."""
        record = self._annotations[annotation_id]
        record.update(fields)
        previous = datetime.fromisoformat(record["updated_at"])
        record["updated_at"] = iso_datetime(max(self._now(), previous + timedelta(microseconds=1)))
        return record

    def set_annotation_fields_silently(self, annotation_id: int, **fields: Any) -> None:
        """A bulk change that leaves updated_at alone (sibling ground_truth flip, profile edit)."""
        self._annotations[annotation_id].update(fields)

    def delete_annotation(self, annotation_id: int) -> None:
        del self._annotations[annotation_id]

    # --- Credentials -----------------------------------------------------------------------------

    def issue_personal_access_token(self, *, lifetime: float = PAT_LIFETIME) -> str:
        """What ``POST /api/token/`` returns: a JWT refresh token."""
        return self._sign("refresh", lifetime)

    def revoke_access_tokens(self) -> None:
        """Every access token issued so far now gets 401, as if expired."""
        self._revoked_jtis |= self._access_jtis

    def revoke_refresh_token(self, token: str) -> None:
        """Blacklist a personal access token, as ``POST /api/token/blacklist/`` does."""
        claims = jwt_claims(token, None)
        if claims is None or "jti" not in claims:
            raise ValueError("not a token this fake issued")
        self._revoked_jtis.add(claims["jti"])

    def _sign(self, token_type: str, lifetime: float) -> str:
        now = self._time()
        jti = uuid.uuid4().hex
        if token_type == "access":
            self._access_jtis.add(jti)
        # simplejwt's claims, in its order; exp and iat are whole seconds.
        claims = {
            "token_type": token_type,
            "exp": int(now + lifetime),
            "iat": int(now),
            "jti": jti,
            "user_id": ADMIN_ID,
        }
        return jwt_encode(claims, self._secret)

    # --- Faults (annotation GETs, but for the one of token refreshes) --------------------------------

    def fail_next_refreshes(self, count: int = 1, *, status: int = 503) -> None:
        """The next `count` token refreshes get `status` (Label Studio down behind its gateway, say)."""
        self._refresh_failures.extend([status] * count)

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        """The next `count` annotation GETs get `status`; `body` None: a Label Studio error body."""
        self._canned.extend([_Canned(status, body, content_type)] * count)

    def respond_raw_next(
        self,
        body: bytes,
        *,
        status: int = 200,
        count: int = 1,
        content_type: str = "application/json",
        content_encoding: str | None = None,
    ) -> None:
        """The next `count` annotation GETs get exactly this body (garbage, wrong types, huge), sent with
        ``Content-Encoding: <content_encoding>`` when given (as a gzipping proxy in front of Label Studio would)."""
        self._canned.extend([_Canned(status, body, content_type, content_encoding)] * count)

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """The next `count` annotation GETs wait `seconds` before answering."""
        self._delays.extend([seconds] * count)

    def hold(self, count: int | None = None) -> None:
        """Annotation GETs wait until `release()` (after being counted as arrived); with `count`, only the next
        `count` of them do and later ones are answered at once."""
        self._released.clear()
        self._hold_budget = count

    def release(self) -> None:
        self._released.set()
        self._hold_budget = None

    async def wait_for_annotation_gets(self, n: int) -> None:
        """Return once `n` annotation GETs have arrived (held ones included)."""
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: len(self._annotation_gets) >= n)

    # --- Inspection ------------------------------------------------------------------------------

    def annotation_gets(self, annotation_id: int | None = None) -> list[RecordedRequest]:
        """GET/HEAD requests on the annotation route, optionally for one id (``06`` counts as 6)."""
        return [recorded for pk, recorded in self._annotation_gets if annotation_id is None or pk == annotation_id]

    # --- HTTP ------------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        recorded = RecordedRequest(
            method=request.method,
            path=request.rel_url.raw_path,
            query=dict(request.query),
            headers={str(name): value for name, value in request.headers.items()},
        )
        # The proxy's dependency check asks for id 0, which never exists: kept apart, so that what tests count is
        # the traffic that callers caused.
        (self.checks if request.rel_url.raw_path.endswith(CHECK_PATH) else self.requests).append(recorded)
        request[_RECORDED] = recorded
        return await handler(request)

    async def _annotation(self, request: web.Request) -> web.StreamResponse:
        pk = int(request.match_info["pk"])  # Django's <int:pk>: "06" is 6
        if request.method in (hdrs.METH_GET, hdrs.METH_HEAD) and pk != 0:  # checks are never held nor failed
            canned = await self._arrive(pk, request[_RECORDED])
            if canned is not None:
                return self._canned_response(canned)

        headers: dict[str, str] = {hdrs.ALLOW: _ANNOTATION_ALLOW}
        # DRF authenticates before it looks at the method or the object.
        auth_error = self._authentication_error(request)
        if auth_error is not None:
            headers[hdrs.WWW_AUTHENTICATE] = _ANNOTATION_AUTH_CHALLENGE
            return self._error(401, auth_error, headers=headers)

        if request.method not in ("GET", "HEAD", "PUT", "PATCH", "DELETE"):
            return self._error(405, f'Method "{request.method}" not allowed.', headers=headers)
        record = self._annotations.get(pk)
        if record is None:
            return self._error(404, NOT_FOUND, headers=headers)

        if request.method == hdrs.METH_DELETE:
            self.delete_annotation(pk)
            return web.Response(status=204, headers=headers)
        if request.method in (hdrs.METH_PUT, hdrs.METH_PATCH):
            data = await self._read_object(request)
            if isinstance(data, web.Response):
                return data
            changes = {k: v for k, v in data.items() if k in record and k not in _READ_ONLY_FIELDS}
            record = self.update_annotation(pk, **changes)

        body = dict(record)
        body["created_ago"] = timesince(datetime.fromisoformat(record["created_at"]), self._now())
        if _wants_expanded_completed_by(request.query):
            body["completed_by"] = _completed_by_object(record.get("completed_by"))
        return self._json(body, headers=headers)

    async def _arrive(self, pk: int, recorded: RecordedRequest) -> _Canned | None:
        """Count an annotation GET as arrived, then apply any hold and delay it has."""
        canned = self._canned.popleft() if self._canned else None
        delay = self._delays.popleft() if self._delays else 0.0
        async with self._arrivals:
            self._annotation_gets.append((pk, recorded))
            self._arrivals.notify_all()
        if self._hold_budget is None:
            await self._released.wait()
        elif self._hold_budget > 0:
            self._hold_budget -= 1
            await self._released.wait()
        if delay > 0:
            with contextlib.suppress(TimeoutError):  # cut short when the server shuts down
                await asyncio.wait_for(self._closing.wait(), timeout=delay)
        return canned

    def _authentication_error(self, request: web.Request) -> str | None:
        """The 401 detail for this request's credentials, or None if they are good."""
        parts = request.headers.get(hdrs.AUTHORIZATION, "").split()
        # LS's JWTAuthenticationMiddleware: a good "Bearer <access>" logs in; a bad one is ignored.
        # (simplejwt matches the scheme case-sensitively.)
        if len(parts) == 2 and parts[0] == "Bearer" and self._is_valid_access_token(parts[1]):
            return None
        # DRF's TokenAuthentication, as LS's TokenAuthenticationPhaseout.
        if not parts or parts[0].lower() != "token":
            return NOT_AUTHENTICATED
        if len(parts) == 1:
            return "Invalid token header. No credentials provided."
        if len(parts) > 2:
            return "Invalid token header. Token string should not contain spaces."
        if not hmac.compare_digest(parts[1].encode(), self.legacy_token.encode()):
            return INVALID_LEGACY_TOKEN
        if not self.legacy_enabled:
            return LEGACY_DISABLED
        return None

    def _is_valid_access_token(self, token: str) -> bool:
        claims = jwt_claims(token, self._secret)
        return (
            claims is not None
            and claims.get("token_type") == "access"
            and isinstance(claims.get("exp"), int)
            and claims["exp"] > self._time()
            and claims.get("jti") not in self._revoked_jtis
        )

    async def _token_refresh(self, request: web.Request) -> web.StreamResponse:
        """simplejwt's TokenRefreshView: no authentication, errors in Label Studio's shape."""
        headers: dict[str, str] = {hdrs.ALLOW: _REFRESH_ALLOW}
        if request.method != hdrs.METH_POST:
            return self._error(405, f'Method "{request.method}" not allowed.', headers=headers)
        self.refresh_calls += 1
        if self.refresh_delay:
            await asyncio.sleep(self.refresh_delay)
        if self._refresh_failures:
            return self._error(self._refresh_failures.popleft(), "Label Studio failed.")
        data = await self._read_object(request)
        if isinstance(data, web.Response):
            return data
        field_error = _refresh_field_error(data)
        if field_error is not None:
            return self._validation_error({"refresh": [field_error]})
        problem = self._refresh_token_problem(str(data["refresh"]).strip())
        if problem is not None:
            headers[hdrs.WWW_AUTHENTICATE] = _REFRESH_AUTH_CHALLENGE
            return self._error(401, problem, headers=headers)
        access = self._sign("access", self.access_token_lifetime)
        padding = {"padding": "x" * self.refresh_padding} if self.refresh_padding else {}
        return self._json({"access": access} | padding, headers=headers)

    def _refresh_token_problem(self, token: str) -> str | None:
        """simplejwt's TokenError message for a refresh token (5.4+ wording), or None if good."""
        claims = jwt_claims(token, self._secret)
        if claims is None or not isinstance(claims.get("exp"), int):
            return "Token is invalid"
        if claims["exp"] <= self._time():
            return "Token is expired"
        if claims.get("jti") in self._revoked_jtis:
            return "Token is blacklisted"
        if "jti" not in claims:
            return "Token has no id"
        if claims.get("token_type") != "refresh":
            return "Token has wrong type"
        return None

    async def _health(self, request: web.Request) -> web.StreamResponse:
        # A plain Django HttpResponse(json.dumps(...)): text/html, and not compact.
        return web.Response(body=b'{"status": "UP"}', content_type="text/html", charset="utf-8")

    async def _not_found_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, body=_HTML_404, content_type="text/html", charset="utf-8")

    async def _add_django_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every response gets a fresh Django session cookie and SecurityMiddleware's headers."""
        # Cookies set with response.set_cookie() are already serialised by the time this signal
        # fires, so write the header itself, formatted by SimpleCookie as Django does.
        alphabet = string.ascii_lowercase + string.digits
        cookie: SimpleCookie = SimpleCookie()
        cookie["sessionid"] = "".join(secrets.choice(alphabet) for _ in range(32))
        morsel = cookie["sessionid"]
        morsel["expires"] = formatdate(self._time() + _SESSION_COOKIE_AGE, usegmt=True)
        morsel["max-age"] = _SESSION_COOKIE_AGE
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        response.headers.add(hdrs.SET_COOKIE, morsel.OutputString())
        for name, value in _DJANGO_HEADERS.items():
            response.headers.setdefault(name, value)

    async def _wake_waiters(self, app: web.Application) -> None:
        """Let held and delayed handlers finish, so server shutdown does not wait for them."""
        self._closing.set()
        self._released.set()

    # --- Responses -------------------------------------------------------------------------------

    def _json(self, data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(body=drf_json(data), status=status, content_type="application/json", headers=headers)

    def _error(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> web.Response:
        """Label Studio's custom_exception_handler body."""
        body: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status_code": status,
            "version": LS_VERSION,
            "detail": detail,
            "exc_info": None,
        }
        body.update(extra or {})
        return self._json(body, status=status, headers=headers)

    def _validation_error(self, errors: dict[str, list[str]]) -> web.Response:
        return self._error(400, "Validation error", extra={"validation_errors": errors})

    def _canned_response(self, canned: _Canned) -> web.Response:
        if canned.body is None:
            return self._error(canned.status, HTTPStatus(canned.status).phrase)
        return web.Response(
            status=canned.status,
            body=canned.body,
            headers={hdrs.CONTENT_TYPE: canned.content_type}
            | ({hdrs.CONTENT_ENCODING: canned.content_encoding} if canned.content_encoding else {}),
        )

    async def _read_object(self, request: web.Request) -> dict[str, Any] | web.Response:
        """DRF's request.data for JSON or form bodies, or the 400/415 DRF would answer."""
        raw = await request.read()
        if not raw:
            return {}
        content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
        if request.content_type == "application/json":
            try:
                data = json.loads(raw)
            except ValueError as exc:
                return self._error(400, f"JSON parse error - {exc}")
        elif request.content_type == "application/x-www-form-urlencoded":
            data = dict(parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))
        else:
            return self._error(415, f'Unsupported media type "{content_type}" in request.')
        if not isinstance(data, dict):
            message = f"Invalid data. Expected a dictionary, but got {type(data).__name__}."
            return self._validation_error({"non_field_errors": [message]})
        return data

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._time(), tz=UTC)

    def _time(self) -> float:
        return self._clock() + self.clock_offset


def _refresh_field_error(data: dict[str, Any]) -> str | None:
    """DRF CharField validation of ``refresh``."""
    if "refresh" not in data:
        return "This field is required."
    value = data["refresh"]
    if value is None:
        return "This field may not be null."
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "Not a valid string."
    if not str(value).strip():
        return "This field may not be blank."
    return None

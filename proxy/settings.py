"""Configuration, read from the environment once at start-up.

Every setting has the environment variable name it is documented under in docs/configuration.md (field names
are those names in lower case). :func:`load_settings` turns pydantic's errors into one line per start-up that names the
variables at fault, so a misconfigured deployment says what to fix instead of printing a traceback.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    FilePath,
    HttpUrl,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from proxy.auth import ClientKey, one_scope_per_key, parse_entry, read_entries
from proxy.budget import BODY_FACTOR, MemoryBudget, memory_budget
from proxy.cache.topology import SENTINEL_SCHEMES, RedisMode, check_url, parse_sentinel_url
from proxy.errors import ConfigError
from proxy.tokens import is_personal_access_token, jwt_expiry

MiB = 1024 * 1024
MAX_TTL = 10 * 365 * 24 * 3600  # seconds: the longest any cache TTL may be (ten years)


def is_loopback_host(host: str) -> bool:
    """True when binding to ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _plain_base_url(url: HttpUrl) -> HttpUrl:
    if url.query or url.fragment:
        raise ValueError("must be a base URL without query or fragment")
    if url.username or url.password:
        raise ValueError("must not carry credentials; use LABEL_STUDIO_API_KEY")
    # The base that API paths go below: ``http://host/ls`` and ``http://host/ls/`` both mean ``/ls/api/...``
    # (a join onto the first would replace its last segment). An empty query or fragment ("?", "#") is dropped.
    base = str(url).partition("?")[0].partition("#")[0]
    return HttpUrl(base if base.endswith("/") else f"{base}/")


def _usable_api_key(key: SecretStr) -> SecretStr:
    value = key.get_secret_value().strip()
    if not value:
        raise ValueError("must not be empty")
    if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
        raise ValueError("must be printable ASCII without whitespace")
    if is_personal_access_token(value):
        exp = jwt_expiry(value)
        if exp is not None and exp <= time.time():
            raise ValueError("the personal access token has expired; create a new one")
    return SecretStr(value)


def _no_hash_tag_braces(prefix: str) -> str:
    if "{" in prefix or "}" in prefix:
        raise ValueError("must not contain '{' or '}' (they would break Redis Cluster hash tags)")
    return prefix


def _split_keys(raw: object) -> object:
    if isinstance(raw, str):
        return tuple(k.strip() for k in raw.split(",") if k.strip())
    return raw


def _sane_client_keys(entries: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    for entry in entries:
        parse_entry(entry.get_secret_value())
    return entries


def _sane_admin_keys(keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    for key in keys:
        if parse_entry(key.get_secret_value()).scope is not None:
            raise ValueError("admin keys have no project scope")
    return keys


def _readable_key_file(path: Path | None) -> Path | None:
    if path is not None:
        try:
            entries = read_entries(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {type(exc).__name__}") from None
        for number, entry in enumerate(entries, 1):
            try:
                parse_entry(entry)
            except ValueError as exc:
                raise ValueError(f"{path}, entry {number}: {exc}") from None
    return path


def _strong_secret(secret: SecretStr | None) -> SecretStr | None:
    if secret is not None:
        value = secret.get_secret_value()
        if len(value) < 16 or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must be at least 16 printable characters without spaces")
    return secret


# Field types with their checks (pydantic reports a check's ValueError under the variable's name).
def _bindable_host(host: str) -> str:
    """An address to listen on: an IPv6 one without the brackets a URL puts around it (``[::1]`` is ``::1``),
    which the socket would take for a host name it cannot resolve."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


LabelStudioUrl = Annotated[HttpUrl, AfterValidator(_plain_base_url)]
ListenHost = Annotated[str, AfterValidator(_bindable_host)]
ApiKey = Annotated[SecretStr, AfterValidator(_usable_api_key)]
KeyPrefix = Annotated[str, Field(max_length=64), AfterValidator(_no_hash_tag_braces)]
ClientKeyEntries = Annotated[
    tuple[SecretStr, ...], NoDecode, BeforeValidator(_split_keys), AfterValidator(_sane_client_keys)
]
AdminKeys = Annotated[tuple[SecretStr, ...], NoDecode, BeforeValidator(_split_keys), AfterValidator(_sane_admin_keys)]
KeyFile = Annotated[FilePath | None, AfterValidator(_readable_key_file)]
WebhookSecret = Annotated[SecretStr | None, AfterValidator(_strong_secret)]


class Settings(BaseSettings):
    """The proxy's settings. Tests build it directly: ``Settings(label_studio_url=..., ...)``."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    # Upstream
    label_studio_url: LabelStudioUrl
    label_studio_api_key: ApiKey
    proxy_upstream_timeout: float = Field(default=10.0, gt=0, le=300)
    proxy_upstream_max_connections: int = Field(default=32, ge=1, le=1000)
    proxy_max_body_bytes: int = Field(default=10 * MiB, ge=1024)

    # Cache
    redis_url: SecretStr | None = None  # may carry a password
    proxy_redis_timeout: float = Field(default=0.25, gt=0, le=30)
    proxy_redis_mode: RedisMode = "standalone"
    proxy_memory_cache_max_bytes: int = Field(default=64 * MiB, ge=64 * 1024)
    proxy_hot_ttl: float = Field(default=5.0, ge=0, le=300)
    proxy_hot_max_bytes: int = Field(default=16 * MiB, ge=0)
    proxy_render_max_bytes: int = Field(default=16 * MiB, ge=0)
    proxy_inflight_max_bytes: int = Field(default=128 * MiB, ge=MiB)
    # At most ten years: an unbounded TTL (inf, 1e17) made every lookup a 500, or every Redis write an error.
    proxy_cache_ttl: float = Field(default=300.0, gt=0, le=MAX_TTL)
    proxy_stale_ttl: float = Field(default=3600.0, ge=0, le=MAX_TTL)
    proxy_negative_ttl: float = Field(default=30.0, ge=0, le=MAX_TTL)
    proxy_stale_if_error_ttl: float = Field(default=86400.0, ge=0, le=MAX_TTL)
    proxy_key_prefix: KeyPrefix = "annotation-proxy:"
    # Callers' Cache-Control (no-cache, max-age, ...) may make the proxy ask Label Studio (docs/freshness.md).
    proxy_client_revalidation: bool = True

    # Server
    proxy_host: ListenHost = "127.0.0.1"
    proxy_port: int = Field(default=8080, ge=1, le=65535)
    proxy_client_keys: ClientKeyEntries = ()
    proxy_client_keys_file: KeyFile = None
    proxy_allow_anonymous: bool = False
    proxy_shutdown_timeout: float = Field(default=10.0, gt=0, le=300)
    proxy_admin_keys: AdminKeys = ()
    proxy_webhook_secret: WebhookSecret = None
    proxy_webhook_max_bytes: int = Field(default=MiB, ge=1024, le=64 * MiB)
    proxy_request_body_timeout: float = Field(default=10.0, gt=0, le=300)
    proxy_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    proxy_compression: bool = True  # gzip for callers that accept it (docs/api.md)

    # Operations: a second listener with /metrics, /healthz and /readyz only; the dependency checks.
    proxy_metrics_host: ListenHost = "0.0.0.0"  # noqa: S104 - scraped from outside the pod; serves no annotation
    proxy_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    proxy_check_interval: float = Field(default=10.0, ge=0.05, le=300)

    @model_validator(mode="after")
    def _redis_url_fits_the_mode(self) -> Settings:
        if self.redis_url is not None:
            try:
                check_url(self.redis_url.get_secret_value(), self.proxy_redis_mode)
            except ValueError as exc:
                raise ValueError(f"REDIS_URL: {exc}") from None
        return self

    @model_validator(mode="after")
    def _room_for_the_largest_body(self) -> Settings:
        if self.proxy_inflight_max_bytes < BODY_FACTOR * self.proxy_max_body_bytes:
            raise ValueError(
                f"PROXY_INFLIGHT_MAX_BYTES must be at least {BODY_FACTOR} x PROXY_MAX_BODY_BYTES "
                f"({BODY_FACTOR * self.proxy_max_body_bytes}): a body costs that much while it is read and validated"
            )
        return self

    def memory_budget(self) -> MemoryBudget:
        """What this configuration may hold in memory at most, part by part (proxy/budget.py)."""
        return memory_budget(
            memory_store_bytes=self.proxy_memory_cache_max_bytes if self.cache_backend == "memory" else 0,
            hot_bytes=self.proxy_hot_max_bytes,
            render_bytes=self.proxy_render_max_bytes,
            inflight_bytes=self.proxy_inflight_max_bytes,
            webhook_max_bytes=self.proxy_webhook_max_bytes if self.proxy_webhook_secret else 0,
        )

    @model_validator(mode="after")
    def _two_listeners_apart(self) -> Settings:
        if self.proxy_metrics_port != self.proxy_port:
            return self
        wildcards = {"0.0.0.0", "::", ""}  # noqa: S104
        if self.proxy_metrics_host == self.proxy_host or {self.proxy_metrics_host, self.proxy_host} & wildcards:
            raise ValueError("PROXY_METRICS_PORT must differ from PROXY_PORT (or listen on another address)")
        return self

    @model_validator(mode="after")
    def _one_scope_per_key(self) -> Settings:
        one_scope_per_key(self.client_keys())
        return self

    @model_validator(mode="after")
    def _no_open_door(self) -> Settings:
        open_door = not self.client_keys() and not self.proxy_allow_anonymous
        if open_door and not is_loopback_host(self.proxy_host):
            raise ValueError(
                f"PROXY_CLIENT_KEYS is empty and PROXY_HOST={self.proxy_host} is not a loopback "
                "address: anyone who can reach the proxy could read every annotation with its token. "
                "Set PROXY_CLIENT_KEYS, or PROXY_ALLOW_ANONYMOUS=true if that is intended"
            )
        return self

    # Derived values, so callers never re-derive them.

    @property
    def uses_personal_access_token(self) -> bool:
        return is_personal_access_token(self.label_studio_api_key.get_secret_value())

    def client_keys(self) -> list[ClientKey]:
        """Every client key, from PROXY_CLIENT_KEYS and PROXY_CLIENT_KEYS_FILE (read again on each call)."""
        entries = [e.get_secret_value() for e in self.proxy_client_keys]
        if self.proxy_client_keys_file is not None:
            entries += read_entries(self.proxy_client_keys_file)
        return [parse_entry(entry) for entry in entries]

    @property
    def cache_backend(self) -> Literal["redis", "memory"]:
        """Where the cache is: Redis when REDIS_URL is set, else process memory."""
        return "redis" if self.redis_url else "memory"

    @property
    def anonymous_access(self) -> bool:
        return not self.client_keys()

    def redacted(self) -> dict[str, object]:
        """The effective configuration for the start-up log line: every field, with every secret masked.

        Derived from the model, so a new setting is logged without anyone remembering to: a plain value as it
        is, a secret as ``<secret>`` and a tuple of secrets as ``<N keys>``, unless :meth:`_shown` says better.
        """
        shown: dict[str, object] = {"cache": self.cache_backend}
        for name in type(self).model_fields:
            shown[name] = self._shown(name, getattr(self, name))
        return shown

    def _shown(self, name: str, value: object) -> object:
        if name == "label_studio_api_key":
            return "<personal access token>" if self.uses_personal_access_token else "<legacy token>"
        if name == "redis_url":
            return describe_redis_url(self.redis_url.get_secret_value()) if self.redis_url else None
        if name == "proxy_client_keys":  # with the file's entries: the keys in force
            return f"<{len(self.client_keys())} keys>"
        if name == "proxy_webhook_secret":
            return "on" if value else "off"
        if isinstance(value, SecretStr):
            return "<secret>"
        if isinstance(value, tuple) and all(isinstance(item, SecretStr) for item in value):
            return f"<{len(value)} keys>"
        if isinstance(value, HttpUrl | Path):
            return str(value)
        return value


def describe_redis_url(url: str) -> str:
    """Where the cache is, for logs: scheme, host, port and path only. Credentials may hide in the user info
    *and* in the query (redis-py reads ``?password=``), so neither is ever shown."""
    if url.partition("://")[0].lower() in SENTINEL_SCHEMES:
        try:
            return parse_sentinel_url(url).describe()
        except ValueError:
            return "redis+sentinel://<unparsable>"
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() == "unix":
            return f"unix://{parts.path}"
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme.lower()}://{host}{port}{parts.path}"
    except ValueError:  # only shown for a URL that passed check_url, which urlsplit parses: never more than this
        return "<unparsable>"


def _describe(error: dict[str, object]) -> str:
    loc = error.get("loc")
    loc = loc if isinstance(loc, tuple) else ()
    msg = str(error.get("msg", "invalid"))
    if not loc:  # a model-level rule: its message names its own variables
        return msg.removeprefix("Value error, ")
    name = str(loc[0]).upper()
    if error.get("type") == "missing":
        return f"{name} is required"
    return f"{name}: {msg.removeprefix('Value error, ')}"


def format_validation_error(exc: ValidationError) -> str:
    """One line naming every variable at fault. Never includes the values (they may be secrets)."""
    return "; ".join(_describe(dict(e)) for e in exc.errors(include_input=False, include_url=False))


def load_settings() -> Settings:
    """Read the settings from the environment, or raise :class:`ConfigError` with one readable line."""
    try:
        return Settings()  # type: ignore[call-arg]  # required fields come from the environment
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None

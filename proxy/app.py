"""``create_app(settings)``: the application factory. Nothing happens at import time.

Each resource is opened by its own cleanup context, in dependency order (store, upstream session, service),
and closed in reverse order when the application stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy import __version__
from proxy.answers import Answers
from proxy.auth import ClientKeys, parse_entry
from proxy.breaker import CircuitBreaker, State
from proxy.budget import BODY_FACTOR, ByteBudget, answer_memo_bytes
from proxy.cache import AnnotationStore, KeyScheme, MemoryStore, open_redis_store
from proxy.cache.breaker import CircuitBreakingStore
from proxy.cache.hot import HotTier
from proxy.credentials import TOKEN_REFRESH_PATH, Credentials, LegacyToken, PersonalAccessToken
from proxy.http_guard import redact_parser_error_responses
from proxy.keys import (
    ADMIN_KEYS,
    ANSWERS,
    BODIES,
    CLIENT_KEYS,
    CLOCK,
    LIVE_BODIES,
    METRICS,
    MONOTONIC,
    READINESS,
    SERVICE,
    SETTINGS,
    STORE,
    UPSTREAM,
    WEBHOOK_BODIES,
)
from proxy.logs import redact_aiohttp_parser_errors
from proxy.metrics import Metrics
from proxy.ops_listener import ops_listener_ctx
from proxy.readiness import Readiness
from proxy.render import LiveBodies
from proxy.routes import setup_routes
from proxy.served import Served
from proxy.service import AnnotationService, CachePolicy
from proxy.settings import Settings
from proxy.upstream import LabelStudioClient, UpstreamPolicy

log = logging.getLogger("proxy.app")

USER_AGENT = f"annotation-proxy/{__version__}"
# After this many Redis failures in a row, leave Redis alone this many seconds, then probe it.
CACHE_BREAKER_THRESHOLD = 3
CACHE_BREAKER_COOLDOWN = 5.0
# After this many failed requests to Label Studio in a row (no answer, or a 5xx), stop for this many seconds.
UPSTREAM_BREAKER_THRESHOLD = 5
UPSTREAM_BREAKER_COOLDOWN = 5.0
# A webhook's version holds older ones back for as long as a fetch can take, and this much more.
FENCE_MARGIN = 2.0


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    store: AnnotationStore | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the proxy. ``registry``, ``store`` and the clocks replace the defaults (tests pass their own).

    ``clock`` is wall-clock time (cache ages, token expiry); ``monotonic`` measures intervals (circuit breakers,
    readiness reuse).
    """
    redact_aiohttp_parser_errors()  # the log line about a request the parser could not read
    redact_parser_error_responses()  # and the 400 body answering it
    # Only the webhook reads a request body; this bounds it (a larger one is answered 413).
    app = web.Application(client_max_size=settings.proxy_webhook_max_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics.create(registry or CollectorRegistry(), version=__version__)
    app[CLIENT_KEYS] = ClientKeys(settings.client_keys())
    app[ADMIN_KEYS] = ClientKeys(parse_entry(k.get_secret_value()) for k in settings.proxy_admin_keys)
    app[CLOCK] = clock
    app[LIVE_BODIES] = LiveBodies(settings.proxy_render_max_bytes)
    app[ANSWERS] = Answers(answer_memo_bytes(settings.proxy_render_max_bytes))
    # Bodies being read (from Label Studio or, when large, from Redis), validated and served from such a read.
    app[BODIES] = ByteBudget(settings.proxy_inflight_max_bytes)
    app[WEBHOOK_BODIES] = ByteBudget(BODY_FACTOR * settings.proxy_webhook_max_bytes)
    app[MONOTONIC] = monotonic
    app[READINESS] = Readiness(app[METRICS], backend=settings.cache_backend, interval=settings.proxy_check_interval)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = store if store is not None else open_store(settings, app[METRICS], app[MONOTONIC], app[BODIES])
        yield
        await app[STORE].close()

    app.cleanup_ctx.append(ops_listener_ctx)  # first up, last down: it says "starting" and "shutting down"
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(upstream_ctx)
    app.cleanup_ctx.append(service_ctx)
    app.on_shutdown.append(stop_being_ready)
    setup_routes(app)
    return app


def open_store(
    settings: Settings, metrics: Metrics, monotonic: Callable[[], float], bodies: ByteBudget
) -> AnnotationStore:
    if settings.redis_url is None:
        log.info(
            "no REDIS_URL: caching in process memory",
            extra={"max_bytes": settings.proxy_memory_cache_max_bytes},
        )
        return MemoryStore(settings.proxy_memory_cache_max_bytes, clock=monotonic)
    redis = open_redis_store(
        settings.redis_url.get_secret_value(),
        KeyScheme(settings.proxy_key_prefix),
        timeout=settings.proxy_redis_timeout,
        mode=settings.proxy_redis_mode,
        bodies=bodies,
    )
    breaker = CircuitBreaker(
        threshold=CACHE_BREAKER_THRESHOLD,
        cooldown=CACHE_BREAKER_COOLDOWN,
        clock=monotonic,
        on_change=lambda state: metrics.cache_available.set(1 if state is State.CLOSED else 0),
    )
    return CircuitBreakingStore(redis, breaker)


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # No total: each caller bounds its own exchanges (a lookup's deadline, the dependency check's, the token
    # refresh's), and a second timer per request, aiohttp's, would only duplicate theirs.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(settings.proxy_upstream_timeout, 5.0))
    async with aiohttp.ClientSession(
        timeout=timeout,
        # One more than the client's own bound, for the token refresh that may run beside a full house.
        connector=aiohttp.TCPConnector(limit=settings.proxy_upstream_max_connections + 1, ttl_dns_cache=60),
        cookie_jar=aiohttp.DummyCookieJar(),  # Label Studio's session cookie must never be replayed
        headers={
            aiohttp.hdrs.USER_AGENT: USER_AGENT,
            # A body's memory is reserved by its Content-Length before it is read (proxy/exchange.py): exact for a
            # plain body, where a compressed one could inflate to many times its length on the wire.
            aiohttp.hdrs.ACCEPT_ENCODING: "identity",
        },
        raise_for_status=False,
        trust_env=False,
    ) as session:
        base_url = URL(str(settings.label_studio_url))  # it ends with a slash (proxy/settings.py)
        credentials: Credentials
        if settings.uses_personal_access_token:
            credentials = PersonalAccessToken(
                settings.label_studio_api_key,
                session=session,
                refresh_url=base_url.join(URL(TOKEN_REFRESH_PATH)),
                timeout=settings.proxy_upstream_timeout,
                metrics=app[METRICS],
                clock=app[CLOCK],
                monotonic=app[MONOTONIC],
            )
        else:
            credentials = LegacyToken(settings.label_studio_api_key)
        metrics = app[METRICS]

        def show_state(state: State) -> None:
            for each in State:
                metrics.upstream_circuit_state.labels(state=each.value).set(1 if each is state else 0)

        app[UPSTREAM] = LabelStudioClient(
            session,
            base_url,
            credentials,
            policy=UpstreamPolicy(
                timeout=settings.proxy_upstream_timeout,
                max_connections=settings.proxy_upstream_max_connections,
            ),
            breaker=CircuitBreaker(
                threshold=UPSTREAM_BREAKER_THRESHOLD,
                cooldown=UPSTREAM_BREAKER_COOLDOWN,
                clock=app[MONOTONIC],
                on_change=show_state,
            ),
            metrics=metrics,
            max_body_bytes=settings.proxy_max_body_bytes,
            user_agent=USER_AGENT,
            bodies=app[BODIES],
        )
        yield


async def stop_being_ready(app: web.Application) -> None:
    """On SIGTERM aiohttp stops listening, runs this, lets requests in flight finish (PROXY_SHUTDOWN_TIMEOUT),
    then closes the cleanup contexts: background loads are cancelled, sessions and pools closed."""
    log.info("shutting down: finishing requests in flight", extra={"timeout_s": app[SETTINGS].proxy_shutdown_timeout})
    app[READINESS].shutting_down()


async def service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    policy = CachePolicy(
        ttl=settings.proxy_cache_ttl,
        stale_ttl=settings.proxy_stale_ttl,
        negative_ttl=settings.proxy_negative_ttl,
        stale_if_error_ttl=settings.proxy_stale_if_error_ttl,
        # The claim outlives the fetch it covers (the upstream deadline), so it lapses only if its holder died.
        claim_ttl=settings.proxy_upstream_timeout + 1.0 if settings.redis_url else 0.0,
        fence_ttl=settings.proxy_upstream_timeout + FENCE_MARGIN,
        client_revalidation=settings.proxy_client_revalidation,
    )
    hot: HotTier[Served] = HotTier(ttl=settings.proxy_hot_ttl, max_bytes=settings.proxy_hot_max_bytes, clock=app[CLOCK])
    service = AnnotationService(
        app[STORE], app[UPSTREAM], app[METRICS], policy, clock=app[CLOCK], monotonic=app[MONOTONIC], hot=hot
    )
    app[SERVICE] = service
    service.start()
    app[READINESS].start(app[STORE], app[UPSTREAM])
    yield
    await app[READINESS].close()
    await service.close()

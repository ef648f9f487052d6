"""The webhook receiver: the fast path for freshness (never the only one: some changes send none).

Label Studio POSTs an event once, waits one second, and never retries; it has no signature, only the custom
headers it was registered with. So the receiver checks ``X-Webhook-Secret`` in constant time, reads the body
within its bounds, and hands the event (:mod:`proxy.events`: models, validation, effect) to the cache at once,
leaving the re-fetching from Label Studio to background tasks, and answers.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from proxy.auth import secret_digest
from proxy.budget import BODY_FACTOR
from proxy.errors import BadWebhook, CacheError, ServiceUnavailable, WrongWebhookSecret
from proxy.events import HANDLED_ACTIONS, SECRET_HEADER, apply_event, parse_event
from proxy.http_guard import read_body
from proxy.keys import METRICS, REQUEST_ID, SERVICE, SETTINGS, WEBHOOK_BODIES

log = logging.getLogger("proxy.webhooks")


async def label_studio_webhook(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    secret = app[SETTINGS].proxy_webhook_secret
    if secret is None:  # the route is only added with a secret; this keeps the handler safe on its own
        raise web.HTTPNotFound()
    presented = request.headers.get(SECRET_HEADER, "")
    if not hmac.compare_digest(secret_digest(presented), secret_digest(secret.get_secret_value())):
        metrics.webhook_events.labels(action="other", outcome="unauthorized").inc()
        raise WrongWebhookSecret()

    # Bounded in size by the application's client_max_size (PROXY_WEBHOOK_MAX_BYTES), in time here, and in memory
    # by the webhook share of the memory budget: one maximal body read and parsed at a time (proxy/budget.py).
    length = min(request.content_length or app[SETTINGS].proxy_webhook_max_bytes, app[SETTINGS].proxy_webhook_max_bytes)
    async with app[WEBHOOK_BODIES].reserve(BODY_FACTOR * length):
        body = await read_body(request, app[SETTINGS].proxy_request_body_timeout)
        try:
            action, event = parse_event(body)
        except BadWebhook:
            metrics.webhook_events.labels(action="other", outcome="invalid").inc()
            raise
        del body
    label = action if action in HANDLED_ACTIONS else "other"
    if event is None:
        metrics.webhook_events.labels(action=label, outcome="ignored").inc()
        return web.json_response({"status": "ignored", "action": action[:64]})

    try:
        affected = await apply_event(app[SERVICE], event, request[REQUEST_ID])
    except CacheError:
        metrics.webhook_events.labels(action=label, outcome="cache_error").inc()
        log.warning("webhook not applied: cache unavailable", extra={"action": label})
        raise ServiceUnavailable(
            "The cache could not apply the event; cached copies may be stale until their TTL."
        ) from None
    metrics.webhook_events.labels(action=label, outcome="applied").inc()
    log.info("webhook applied", extra={"action": label, "annotations": affected})
    return web.json_response({"status": "applied", "action": action, "annotations": affected})

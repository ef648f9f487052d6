"""Label Studio's webhooks: the fast path for freshness (never the only one: some changes send none).

Label Studio POSTs an event once, waits one second, and never retries; it has no signature, only the custom
headers it was registered with. So the receiver checks ``X-Webhook-Secret`` in constant time, validates and
applies the event to the cache at once, leaves the re-fetching from Label Studio to background tasks, and
answers. The annotation objects inside events come from another serializer than ``GET`` uses: the proxy
takes their ids and ``updated_at`` and never stores them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from proxy.budget import BODY_FACTOR
from proxy.errors import BadWebhook, CacheError, ServiceUnavailable, WrongWebhookSecret
from proxy.http_guard import read_body
from proxy.keys import METRICS, REQUEST_ID, SERVICE, SETTINGS, WEBHOOK_BODIES
from proxy.models import PositiveId, Timestamp, epoch_micros
from proxy.service import for_each

log = logging.getLogger("proxy.webhooks")

SECRET_HEADER = "X-Webhook-Secret"  # noqa: S105 - a header name, not a secret
HANDLED_ACTIONS = frozenset(
    {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED", "TASKS_DELETED"}
)


class _Event(BaseModel):
    # Strict: Label Studio writes ids as JSON integers; ``true``, ``1.0`` or ``"1"`` is not an id (lax mode would
    # read each as 1 and drop another annotation's cached copy).
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class EventAnnotation(_Event):
    id: PositiveId
    updated_at: Timestamp


class Ref(_Event):
    id: PositiveId


class AnnotationEvent(_Event):
    action: Literal["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
    annotation: EventAnnotation


class AnnotationsCreatedEvent(_Event):
    action: Literal["ANNOTATIONS_CREATED"]
    annotation: list[EventAnnotation]


class AnnotationsDeletedEvent(_Event):
    action: Literal["ANNOTATIONS_DELETED"]
    annotations: list[Ref]


class TasksDeletedEvent(_Event):
    action: Literal["TASKS_DELETED"]
    tasks: list[Ref]


class Envelope(_Event):
    action: str = Field(max_length=64)


Event = Annotated[
    AnnotationEvent | AnnotationsCreatedEvent | AnnotationsDeletedEvent | TasksDeletedEvent,
    Field(discriminator="action"),
]
EVENT = TypeAdapter[Event](Event)


def parse_event(body: bytes) -> tuple[str, Event | None]:
    """The event's action and, for the actions the proxy acts on, the validated event.

    Raises :class:`BadWebhook` naming what is wrong (never echoing values).
    """
    try:
        action = Envelope.model_validate_json(body).action
        if action not in HANDLED_ACTIONS:
            return action, None
        return action, EVENT.validate_json(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)[:3]
        ]
        raise BadWebhook(f"Malformed webhook body: {'; '.join(problems)}.") from None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


async def label_studio_webhook(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    secret = app[SETTINGS].proxy_webhook_secret
    if secret is None:  # the route is only added with a secret; this keeps the handler safe on its own
        raise web.HTTPNotFound()
    presented = request.headers.get(SECRET_HEADER, "")
    if not hmac.compare_digest(_digest(presented), _digest(secret.get_secret_value())):
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
        affected = await apply(request, event)
    except CacheError:
        metrics.webhook_events.labels(action=label, outcome="cache_error").inc()
        log.warning("webhook not applied: cache unavailable", extra={"action": label})
        raise ServiceUnavailable(
            "The cache could not apply the event; cached copies may be stale until their TTL."
        ) from None
    metrics.webhook_events.labels(action=label, outcome="applied").inc()
    log.info("webhook applied", extra={"action": label, "annotations": affected})
    return web.json_response({"status": "applied", "action": action, "annotations": affected})


async def apply(request: web.Request, event: Event) -> int:
    """Apply one event to the cache; returns how many annotations it touched."""
    service = request.app[SERVICE]
    request_id = request[REQUEST_ID]
    if isinstance(event, AnnotationEvent | AnnotationsCreatedEvent):
        changed = event.annotation if isinstance(event, AnnotationsCreatedEvent) else [event.annotation]

        async def annotation_changed(annotation: EventAnnotation) -> None:
            await service.annotation_changed(annotation.id, epoch_micros(annotation.updated_at), request_id)

        await for_each(changed, annotation_changed)
        return len(changed)
    if isinstance(event, AnnotationsDeletedEvent):
        await for_each([ref.id for ref in event.annotations], service.annotation_deleted)
        return len(event.annotations)
    return sum(await for_each([ref.id for ref in event.tasks], service.task_deleted))

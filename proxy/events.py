"""Label Studio's webhook events: what the proxy reads of them, validated strictly, and what each does to the cache.

The HTTP side (the secret, the body's size, time and memory bounds, the answer) is :mod:`proxy.webhooks`; the
OpenAPI document (:mod:`proxy.openapi`) is built from these models, so it cannot drift from what is accepted.
The annotation objects inside events come from another serializer than ``GET`` uses: the proxy takes their ids
and ``updated_at`` and never stores them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from proxy.errors import BadWebhook
from proxy.invalidations import for_each
from proxy.metrics import WEBHOOK_ACTIONS
from proxy.models import PositiveId, Timestamp, epoch_micros, summarize
from proxy.service import AnnotationService

SECRET_HEADER = "X-Webhook-Secret"  # noqa: S105 - a header name, not a secret
# The actions the proxy acts on: every webhook action the metrics name, but "other".
HANDLED_ACTIONS = frozenset(action for action in WEBHOOK_ACTIONS if action != "other")


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
        raise BadWebhook(f"Malformed webhook body: {summarize(exc, count_the_rest=False)}.") from None


async def apply_event(service: AnnotationService, event: Event, request_id: str) -> int:
    """Apply one event to the cache; returns how many annotations it touched. Raises CacheError."""
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

"""Webhook bodies shaped like Label Studio 1.23.2's (see ../shared/label-studio/samples/webhook-*.json)."""

from __future__ import annotations

from typing import Any

PROJECT = {"id": 1, "title": "Proxy test", "created_at": "2026-11-28T12:27:29.517958Z", "organization": 1}

# The webhook serializer's annotation: these keys exist, GET's created_ago and created_username do not.
_WEBHOOK_ONLY = {"prediction": {}, "result_count": 0, "unique_id": "d56fecce-bc07-4250-bc7c-5958d7e44dbb"}


def webhook_annotation(record: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in record.items() if k not in ("created_ago", "created_username")}
    return body | _WEBHOOK_ONLY


def annotation_event(action: str, record: dict[str, Any]) -> dict[str, Any]:
    task = {"id": record["task"], "data": {"text": "x"}, "meta": {}, "is_labeled": True}
    return {"action": action, "annotation": webhook_annotation(record), "project": PROJECT, "task": task}


def annotations_created(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [webhook_annotation(r) for r in records],
        "project": PROJECT,
        "task": [{"id": r["task"]} for r in records],
    }


def annotations_deleted(*ids: int) -> dict[str, Any]:
    return {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in ids], "project": PROJECT}


def tasks_deleted(*ids: int) -> dict[str, Any]:
    return {"action": "TASKS_DELETED", "tasks": [{"id": i} for i in ids], "project": PROJECT}

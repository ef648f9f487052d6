"""Real Label Studio 1.23.2 bodies from ../shared, loaded once, for tests that need the genuine article."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[3] / "shared" / "label-studio"
SAMPLE_PATH = SHARED / "samples" / "get-annotation-200.json"

# A copy, so the suite also runs where ../shared is absent (the keys and values of the shared sample).
SAMPLE_BODY = (
    b'{"id":1,"result":[{"from_name":"sentiment","to_name":"text","type":"choices","value":{"choices":'
    b'["Positive"]}}],"created_username":" admin@example.com, 1","created_ago":"0\xc2\xa0minutes","completed_by":1,'
    b'"was_cancelled":false,"ground_truth":false,"created_at":"2026-11-28T12:27:33.279095Z",'
    b'"updated_at":"2026-11-28T12:27:33.279137Z","draft_created_at":null,"lead_time":3.5,"import_id":null,'
    b'"last_action":null,"bulk_created":false,"task":1,"project":1,"updated_by":1,"parent_prediction":null,'
    b'"parent_annotation":null,"last_created_by":null}'
)


def sample(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(SAMPLE_BODY)
    body.update(changes)
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


# A realistic large annotation's result: 60 rectangle regions, about 19 KB of JSON (the proxy gzips it).
REGIONS = [
    {
        "id": f"region-{n}",
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 1920,
        "original_height": 1080,
        "image_rotation": 0,
        "value": {"x": n * 1.5, "y": n * 0.75, "width": 10.25, "height": 8.5, "rotation": 0, "labels": ["Car"]},
        "origin": "manual",
    }
    for n in range(60)
]

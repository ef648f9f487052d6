"""A small, fast stand-in for Label Studio's annotation endpoint, for the benchmark (bench/run.py).

    python bench/upstream.py --port 8081 [--latency 0.02] [--constant] [--body-bytes 20000]

Answers ``GET /api/annotations/<id>/`` with a valid annotation body for that id (the proxy validates every body),
after a fixed ``--latency``; ``--constant`` answers every path with the body of annotation 1 and no latency: the
bare aiohttp server of row (a). ``--body-bytes`` above 855 adds rectangle regions (varied coordinates, as real
ones are: they compress like real annotations) until the body is at least that long. ``GET /health`` answers
``{"status": "UP"}``. Default event loop unless ``--uvloop``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from typing import Any

from aiohttp import web

LEGACY_TOKEN = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"  # noqa: S105 - the fake's own, not a secret
BODY_BYTES = 855  # the body size the performance issue was measured with

# A real Label Studio 1.23.2 body (../shared/label-studio/samples/get-annotation-200.json), with a longer result
# text so that the rendered body is BODY_BYTES long.
TEMPLATE: dict[str, Any] = {
    "id": 1,
    "result": [
        {
            "id": "Xx4QdHpAbc",
            "type": "choices",
            "value": {"choices": ["Positive"], "text": ""},
            "origin": "manual",
            "to_name": "text",
            "from_name": "sentiment",
        }
    ],
    "created_username": "annotator@example.com, 2",
    "created_ago": "3\u00a0hours, 2\u00a0minutes",
    "completed_by": 2,
    "was_cancelled": False,
    "ground_truth": False,
    "created_at": "2026-11-28T09:00:00.123456Z",
    "updated_at": "2026-11-28T09:05:00.654321Z",
    "draft_created_at": None,
    "lead_time": 12.5,
    "import_id": None,
    "last_action": "submitted",
    "bulk_created": False,
    "task": 7,
    "project": 3,
    "updated_by": 2,
    "parent_prediction": None,
    "parent_annotation": None,
    "last_created_by": None,
}


def render(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def region(rng: random.Random, n: int) -> dict[str, Any]:
    """One rectangle region as Label Studio's image labeling stores it."""
    return {
        "id": f"r{rng.getrandbits(40):010x}",
        "type": "rectanglelabels",
        "value": {
            "x": round(rng.uniform(0, 90), 6),
            "y": round(rng.uniform(0, 90), 6),
            "width": round(rng.uniform(1, 10), 6),
            "height": round(rng.uniform(1, 10), 6),
            "rotation": 0,
            "rectanglelabels": [rng.choice(["Car", "Person", "Bicycle", "Truck"])],
        },
        "origin": "manual",
        "to_name": "image",
        "from_name": "label",
        "image_rotation": 0,
        "original_width": 1920,
        "original_height": 1080,
        "score": None if n % 2 else round(rng.random(), 4),
    }


def body_for(annotation_id: int, size: int = BODY_BYTES) -> bytes:
    """The body of annotation ``annotation_id`` (of task ``annotation_id``): BODY_BYTES long whatever the id (the
    padding absorbs its digits); with a larger ``size``, regions are added until it is at least that long."""
    fields = json.loads(render(TEMPLATE)) | {"id": annotation_id, "task": annotation_id}  # a deep copy
    if size > BODY_BYTES:
        rng = random.Random(annotation_id)
        while len(render(fields)) < size:
            fields["result"].append(region(rng, len(fields["result"])))
        return render(fields)
    padding = BODY_BYTES - len(render(fields))
    fields["result"][0]["value"]["text"] = "x" * max(padding, 0)
    return render(fields)


def make_app(*, latency: float, constant: bool, size: int = BODY_BYTES) -> web.Application:
    bodies: dict[int, bytes] = {}
    constant_body = body_for(1, size)

    async def annotation(request: web.Request) -> web.Response:
        if constant:
            return web.Response(body=constant_body, content_type="application/json")
        if request.headers.get("Authorization") != f"Token {LEGACY_TOKEN}":
            return web.json_response({"detail": "Invalid token."}, status=401)
        annotation_id = int(request.match_info["id"])
        body = bodies.get(annotation_id)
        if body is None:
            body = bodies[annotation_id] = body_for(annotation_id, size)
        if latency > 0:
            await asyncio.sleep(latency)
        return web.Response(body=body, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "UP"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/api/annotations/{id:[0-9]+}/", annotation)
    if constant:
        app.router.add_get("/{tail:.*}", annotation)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every annotation answer")
    parser.add_argument("--constant", action="store_true", help="row (a): the same bytes for every path")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's loop")
    parser.add_argument("--body-bytes", type=int, default=BODY_BYTES, help="at least this long a body")
    args = parser.parse_args()
    loop = None
    if args.uvloop:
        import uvloop  # noqa: PLC0415 - only when asked

        loop = uvloop.new_event_loop()
    app = make_app(latency=args.latency, constant=args.constant, size=args.body_bytes)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()

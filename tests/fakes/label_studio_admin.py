"""A fake of Label Studio's project and webhook API, for deploy/compose/register_webhook.py.

The parts of Label Studio 1.23.2 the compose stack's one-shot job touches (BEHAVIOUR.md, "Webhooks"):
``GET /health``; ``GET``/``POST /api/projects/`` (paginated like DRF's page-number pagination, two a page here so
that following ``next`` is exercised); ``GET /api/webhooks/?project=<id>`` (a plain list), ``POST /api/webhooks/``,
``PATCH /api/webhooks/<id>/``. Every API call needs ``Authorization: Token <token>``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

PAGE_SIZE = 2


class FakeLabelStudioAdmin:
    def __init__(self, token: str) -> None:
        self.token = token
        self.projects: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []
        self.calls: list[str] = []  # "METHOD /path" of every API call

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/health", self._health)
        app.router.add_get("/api/projects/", self._list_projects)
        app.router.add_post("/api/projects/", self._create_project)
        app.router.add_get("/api/webhooks/", self._list_webhooks)
        app.router.add_post("/api/webhooks/", self._create_webhook)
        app.router.add_patch("/api/webhooks/{id:[0-9]+}/", self._update_webhook)
        return app

    def add_project(self, title: str) -> int:
        project_id = len(self.projects) + 1
        self.projects.append({"id": project_id, "title": title})
        return project_id

    def webhooks_of(self, project: int) -> list[dict[str, Any]]:
        return [hook for hook in self.webhooks if hook["project"] == project]

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            self.calls.append(f"{request.method} {request.path}")
            if request.headers.get("Authorization") != f"Token {self.token}":
                return web.json_response({"status_code": 401, "detail": "Invalid token."}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "UP"})

    async def _list_projects(self, request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        results = self.projects[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        more = page * PAGE_SIZE < len(self.projects)
        next_url = str(request.url.with_query(page=page + 1)) if more else None
        return web.json_response({"count": len(self.projects), "next": next_url, "previous": None, "results": results})

    async def _create_project(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "<View>" not in body.get("label_config", ""):
            return web.json_response({"label_config": ["invalid"]}, status=400)
        project_id = self.add_project(body["title"])
        return web.json_response(self.projects[project_id - 1], status=201)

    async def _list_webhooks(self, request: web.Request) -> web.Response:
        project = request.query.get("project")
        hooks = self.webhooks if project is None else self.webhooks_of(int(project))
        return web.json_response(hooks)

    async def _create_webhook(self, request: web.Request) -> web.Response:
        hook = {"id": len(self.webhooks) + 1} | await request.json()
        self.webhooks.append(hook)
        return web.json_response(hook, status=201)

    async def _update_webhook(self, request: web.Request) -> web.Response:
        (hook,) = [h for h in self.webhooks if h["id"] == int(request.match_info["id"])]
        hook |= await request.json()
        return web.json_response(hook)

"""Register annotation-proxy's webhook in Label Studio: the compose stack's one-shot job.

Standard library only (it runs in a plain Python image). Configured by environment:

- ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``: Label Studio and a token of a user who may manage its
  projects (a legacy token, or a personal access token, which is exchanged for an access token first);
- ``WEBHOOK_URL``: where Label Studio should POST, e.g. ``http://annotation-proxy:8080/webhooks/label-studio``;
- ``PROXY_WEBHOOK_SECRET``: sent by Label Studio as ``X-Webhook-Secret`` (the proxy's setting of that name);
- ``WEBHOOK_PROJECTS`` (optional): comma-separated project ids; default every project;
- ``CREATE_DEMO_PROJECT`` (optional, ``true``/``false``): create a small demo project when there is none.

For each project it creates the webhook, or updates the one already pointing at ``WEBHOOK_URL`` when its secret
or settings differ, so running it again changes nothing. It prints one line per project and exits 1 (with the
reason) on the first error.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

TIMEOUT = 10.0
WAIT_FOR_LABEL_STUDIO = 180.0
DEMO_PROJECT = {
    "title": "annotation-proxy demo",
    "label_config": (
        '<View><Text name="text" value="$text"/>'
        '<Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices>'
        "</View>"
    ),
}


class LabelStudioError(Exception):
    pass


class LabelStudio:
    def __init__(self, base_url: str, api_key: str) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise LabelStudioError("LABEL_STUDIO_URL must be an http:// or https:// URL")
        self._base = base_url.rstrip("/") + "/"
        self._api_key = api_key
        self._authorization: str | None = None

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        url = urljoin(self._base, path.lstrip("/"))
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = self._auth_header()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 (http(s) checked)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise LabelStudioError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise LabelStudioError(f"{method} {path}: {exc}") from None
        return json.loads(raw) if raw else None

    def _auth_header(self) -> str:
        if self._authorization is None:
            if self._api_key.count(".") == 2:  # a JWT: a personal access token, exchanged for an access token
                reply = self.request("POST", "/api/token/refresh/", {"refresh": self._api_key}, auth=False)
                self._authorization = f"Bearer {reply['access']}"
            else:
                self._authorization = f"Token {self._api_key}"
        return self._authorization

    def wait_until_up(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while True:
            try:
                self.request("GET", "/health", auth=False)
            except LabelStudioError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
            else:
                return

    def list(self, path: str, **query: str) -> list[dict[str, Any]]:
        """Every item of a list endpoint, following pages when it is paginated."""
        url: str | None = f"{path}?{urlencode(query)}" if query else path
        items: list[dict[str, Any]] = []
        while url:
            page = self.request("GET", url)
            if isinstance(page, list):
                return items + page
            items += page["results"]
            next_url = page.get("next")
            url = urlsplit(next_url)._replace(scheme="", netloc="").geturl() if next_url else None
        return items


def desired_webhook(project: int, url: str, secret: str) -> dict[str, Any]:
    return {
        "project": project,
        "url": url,
        "headers": {"X-Webhook-Secret": secret},
        "send_payload": True,
        "send_for_all_actions": True,
        "is_active": True,
    }


def register(ls: LabelStudio, project: int, url: str, secret: str) -> str:
    """Create or update the webhook of one project. Returns what was done."""
    wanted = desired_webhook(project, url, secret)
    for hook in ls.list("/api/webhooks/", project=str(project)):
        if hook.get("url") != url or hook.get("project") not in (project, None):
            continue
        if all(hook.get(field) == value for field, value in wanted.items() if field != "project"):
            return "unchanged"
        ls.request("PATCH", f"/api/webhooks/{hook['id']}/", wanted)
        return "updated"
    ls.request("POST", "/api/webhooks/", wanted)
    return "created"


def main() -> int:
    try:
        base_url = os.environ["LABEL_STUDIO_URL"]
        api_key = os.environ["LABEL_STUDIO_API_KEY"]
        webhook_url = os.environ["WEBHOOK_URL"]
        secret = os.environ["PROXY_WEBHOOK_SECRET"]
    except KeyError as exc:
        print(f"register-webhook: {exc.args[0]} is required", file=sys.stderr)
        return 2
    only = [int(p) for p in os.environ.get("WEBHOOK_PROJECTS", "").split(",") if p.strip()]
    create_demo = os.environ.get("CREATE_DEMO_PROJECT", "false").lower() == "true"
    try:
        ls = LabelStudio(base_url, api_key)
        ls.wait_until_up(float(os.environ.get("WAIT_FOR_LABEL_STUDIO", WAIT_FOR_LABEL_STUDIO)))
        projects = only or [p["id"] for p in ls.list("/api/projects/")]
        if not projects and create_demo:
            projects = [ls.request("POST", "/api/projects/", DEMO_PROJECT)["id"]]
            print(f"register-webhook: created project {projects[0]} ({DEMO_PROJECT['title']})")
        if not projects:
            print("register-webhook: no projects yet; run again after creating one")
        for project in projects:
            outcome = register(ls, project, webhook_url, secret)
            print(f"register-webhook: project {project}: webhook {outcome} -> {webhook_url}")
    except LabelStudioError as exc:
        print(f"register-webhook: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The documentation stays true to the code: README.md is short, links work, and every setting, metric, route
and module the code has is documented in docs/. Fast, no network, no process started."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from proxy.edge import UNMATCHED
from proxy.metrics import Metrics
from proxy.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12_000

# [text](target) and [text](target "title"); images too. Reference-style links are not used in these files.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation dropped (but '-' and '_'), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, numbered on repeats as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for line in without_code(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    links = []
    for line in without_code(path.read_text(encoding="utf-8")):
        prose = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        links += [t for t in LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]
    return links


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move the detail into docs/"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_exist(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        if not file.exists():
            broken.append(f"{link}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{link}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_anchor_slugs_follow_github() -> None:
    assert slug("Where Redis is") == "where-redis-is"
    assert slug("Many replicas, one fetch") == "many-replicas-one-fetch"
    assert slug("API: endpoints, `Cache-Status` & headers") == "api-endpoints-cache-status--headers"
    assert slug("snake_case and kebab-case") == "snake_case-and-kebab-case"


def test_every_setting_is_in_configuration() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in text]
    assert not missing, f"docs/configuration.md does not name {missing}"


def test_every_metric_is_in_operations() -> None:
    registry = CollectorRegistry()
    Metrics.create(registry, version="t", process_metrics=False)
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    families = list(registry.collect())
    assert families
    missing = []
    for family in families:
        # What Prometheus shows: a counter's samples carry _total; other families their own name.
        shown = f"{family.name}_total" if family.type == "counter" else family.name
        if f"`{shown}`" not in text:
            missing.append(shown)
    assert not missing, f"docs/operations.md does not name {missing}"


def test_every_route_is_in_api() -> None:
    settings = Settings(
        label_studio_url="http://ls:8080/",  # type: ignore[arg-type]
        label_studio_api_key="0123456789abcdef0123456789abcdef01234567",  # type: ignore[arg-type]
        redis_url=None,
        proxy_webhook_secret="a-webhook-secret-0123456789",  # type: ignore[arg-type]
    )
    app = create_app(settings)
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    # The fallback (proxy/edge.py) serves nothing: the page says every other path is a 404.
    paths = [resource.canonical for resource in app.router.resources() if resource.name != UNMATCHED]
    assert "/api/annotations/{id}{slash}" in paths
    missing = []
    for path in paths:
        # {slash} is an optional trailing slash: the page names the path with and without it.
        forms = [path.replace("{slash}", ""), path.replace("{slash}", "/")] if "{slash}" in path else [path]
        missing += [form for form in forms if form not in text]
    assert not missing, f"docs/api.md does not name {missing}"


def proxy_modules() -> list[str]:
    package = ROOT / "proxy"
    files = [*package.glob("*.py"), *(package / "cache").glob("*.py")]
    return sorted(str(f.relative_to(ROOT)) for f in files if f.name != "__init__.py")


def test_every_module_is_in_architecture() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    modules = proxy_modules()
    assert "proxy/routes.py" in modules
    missing = [module for module in modules if f"`{module}`" not in text]
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_architecture_names_no_missing_module() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(proxy/[\w/]+\.py)`", text))
    assert named
    gone = sorted(module for module in named if not (ROOT / module).is_file())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"


def test_architecture_has_a_mermaid_diagram() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert re.search(r"^```mermaid\s*$\n.*?\S.*?^```\s*$", text, re.MULTILINE | re.DOTALL)

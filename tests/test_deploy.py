"""The deployment files agree with the code: metric names, settings, ports, health paths, the lock file.

`make lint` checks each file against its own schema (hadolint, the compose spec, Kubernetes' OpenAPI, promtool);
these tests check what no schema knows: that the names in those files are the ones the proxy uses.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from proxy import metrics as proxy_metrics
from proxy.app import create_app
from proxy.breaker import State
from proxy.ops_listener import create_ops_app
from proxy.settings import Settings, is_loopback_host
from tests.fakes.label_studio_admin import FakeLabelStudioAdmin
from tests.support.deploy_files import (
    DASHBOARD,
    DEPLOY,
    ROOT,
    dashboard_hit_ratio_expr,
    dashboard_panels,
    expressions,
    identifiers,
    load_dashboard,
    load_yaml,
    load_yaml_documents,
    metric_names,
    recording_rule_names,
    recording_rules_used,
    require_binary,
    rule_files,
    rule_selectors,
    rules,
    selectors,
    substitute_grafana_variables,
)
from tests.support.proxies import ProxyFactory, ServerFactory

SETTING_NAMES = frozenset(name.upper() for name in Settings.model_fields)
DEFAULT_PORT = Settings.model_fields["proxy_port"].default
SHUTDOWN_TIMEOUT = Settings.model_fields["proxy_shutdown_timeout"].default
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SECRET = "a-webhook-secret-for-the-deploy-tests"


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings(...) also reads the environment: only the files under test may configure the proxy here."""
    for name in os.environ:
        if name.upper() in SETTING_NAMES:
            monkeypatch.delenv(name)


# --- What the proxy exports --------------------------------------------------------------------------------------


def exported_series_names(families: list[Any]) -> set[str]:
    """Every series name a scrape can hold for these families, by type: a counter ``x`` is ``x_total``
    (``x`` alone is no series), a histogram ``x`` is ``x_bucket``, ``x_sum`` and ``x_count``; a family with no
    sample yet (labels not used so far) still says what its series will be called."""
    names: set[str] = set()
    for family in families:
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count", "created")}
        elif family.type == "info":
            names.add(f"{family.name}_info")
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def known_label_values(families: list[Any]) -> dict[tuple[str, str], set[str]]:
    """(series, label) -> values seen in the scrape, plus the values proxy.metrics declares for its labels."""
    known: dict[tuple[str, str], set[str]] = {}
    for family in families:
        for sample in family.samples:
            for label, value in sample.labels.items():
                known.setdefault((sample.name, label), set()).add(value)
    declared = {
        ("annotation_proxy_cache_requests_total", "result"): proxy_metrics.CACHE_RESULTS,
        ("annotation_proxy_upstream_requests_total", "outcome"): proxy_metrics.UPSTREAM_OUTCOMES,
        ("annotation_proxy_cache_errors_total", "operation"): proxy_metrics.CACHE_OPERATIONS,
        ("annotation_proxy_revalidations_total", "outcome"): proxy_metrics.REVALIDATION_OUTCOMES,
        ("annotation_proxy_webhook_events_total", "action"): proxy_metrics.WEBHOOK_ACTIONS,
        ("annotation_proxy_webhook_events_total", "outcome"): proxy_metrics.WEBHOOK_OUTCOMES,
        ("annotation_proxy_http_requests_total", "route"): proxy_metrics.ROUTES,
        ("annotation_proxy_http_request_duration_seconds_bucket", "route"): proxy_metrics.ROUTES,
        ("annotation_proxy_http_request_duration_seconds_bucket", "cache"): proxy_metrics.REQUEST_CACHE_LABELS,
        ("annotation_proxy_http_request_duration_seconds_count", "cache"): proxy_metrics.REQUEST_CACHE_LABELS,
        ("annotation_proxy_http_request_duration_seconds_sum", "cache"): proxy_metrics.REQUEST_CACHE_LABELS,
        ("annotation_proxy_upstream_circuit_state", "state"): tuple(state.value for state in State),
        # Set by the background checks: redis only with REDIS_URL, so a scrape need not show every value.
        ("annotation_proxy_dependency_up", "dependency"): proxy_metrics.DEPENDENCIES,
    }
    for key, values in declared.items():
        known.setdefault(key, set()).update(values)
    return known


@pytest.fixture
async def scrape(make_proxy: ProxyFactory) -> list[Any]:
    """The metric families of a proxy that served hits, misses, a 404, an upstream error and a webhook."""
    proxy = await make_proxy(proxy_webhook_secret=SECRET)
    for _ in range(3):
        proxy.fake.add_annotation()
    auth = proxy.auth()
    for annotation_id in (1, 2, 1, 2, 1):  # 2 misses, 3 hits
        assert (await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=auth)).status == 200
    assert (await proxy.client.get("/api/annotations/99/", headers=auth)).status == 404
    proxy.fake.fail_next(3, status=500)
    assert (await proxy.client.get("/api/annotations/3/", headers=auth)).status == 502
    webhook = await proxy.client.post(
        "/webhooks/label-studio", json={"action": "PROJECT_UPDATED"}, headers={"X-Webhook-Secret": SECRET}
    )
    assert webhook.status == 200
    await proxy.client.get("/healthz")
    await proxy.client.get("/readyz")
    response = await proxy.client.get("/metrics")
    assert response.status == 200
    return list(text_string_to_metric_families(await response.text()))


async def test_every_metric_in_the_dashboard_and_the_rules_is_one_the_proxy_exports(scrape: list[Any]) -> None:
    exported = exported_series_names(scrape)
    assert "annotation_proxy_cache_requests_total" in exported  # the scrape is what the proxy serves
    unknown = {
        f"{expression.where}: {name}"
        for expression in expressions()
        for name in metric_names(expression.text)
        if name not in exported
    }
    assert not unknown, f"not exported by the proxy: {sorted(unknown)}"


async def test_every_label_matcher_names_a_label_and_values_the_proxy_uses(scrape: list[Any]) -> None:
    known = known_label_values(scrape)
    labels_of: dict[str, set[str]] = {}
    for series, label in known:
        labels_of.setdefault(series, set()).add(label)
    problems: list[str] = []
    for expression in expressions():
        for metric, label, operator, value in selectors(expression.text):
            if label in ("job", "instance"):  # Prometheus' own target labels
                continue
            if label not in labels_of.get(metric, set()):
                problems.append(f"{expression.where}: {metric} has no label {label!r}")
                continue
            # Literal values, and alternatives of literals: each must be one the proxy can produce.
            if operator in ("=", "=~") and re.fullmatch(r"[\w.+]+(\|[\w.+]+)*", value):
                for literal in value.split("|"):
                    if literal not in known[(metric, label)]:
                        problems.append(f"{expression.where}: {metric}{{{label}={literal!r}}} never exported")
    assert not problems, "\n".join(problems)


def test_recording_rule_matchers_name_labels_the_rule_keeps_and_values_the_proxy_uses() -> None:
    """A rule named level:metric:operations keeps the labels of its level (job_cache: job and cache); a matcher on
    any other label selects nothing, and a cache value the proxy never produces selects nothing either."""
    values = {"cache": set(proxy_metrics.REQUEST_CACHE_LABELS)}
    problems: list[str] = []
    matched = 0
    for expression in expressions():
        for rule, label, operator, value in rule_selectors(expression.text):
            matched += 1
            kept = set(rule.split(":")[0].split("_"))
            if label not in kept:
                problems.append(f"{expression.where}: {rule} keeps {sorted(kept)}, not {label!r}")
            elif label in values and operator in ("=", "=~") and re.fullmatch(r"\w+(\|\w+)*", value):
                problems.extend(
                    f"{expression.where}: {rule}{{{label}={literal!r}}} never recorded"
                    for literal in value.split("|")
                    if literal not in values[label]
                )
    assert matched, "the dashboard selects recording rules by label"
    assert not problems, "\n".join(problems)


def test_recording_rules_used_by_the_dashboard_and_the_alerts_are_defined() -> None:
    defined = recording_rule_names()
    used = {
        f"{expression.where}: {name}"
        for expression in expressions()
        if expression.is_promql
        for name in recording_rules_used(expression.text)
        if name not in defined
    }
    assert not used, f"undefined recording rules: {sorted(used)}"
    # And every recording rule is read by something (or it is dead weight for Prometheus).
    texts = " ".join(e.text for e in expressions() if e.is_promql and not e.where.endswith(tuple(defined)))
    unused = {name for name in defined if name not in identifiers(texts)}
    assert not unused, f"recording rules nothing reads: {sorted(unused)}"


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query (as Grafana would send it) as if it were a recording rule."""
    promtool = require_binary("promtool")
    dashboard = load_dashboard()
    queries = [
        {"record": f"dashboard:query:{n}", "expr": substitute_grafana_variables(target["expr"], "annotation-proxy")}
        for n, target in enumerate(t for p in dashboard_panels(dashboard) for t in p.get("targets", []))
    ]
    path = tmp_path / "dashboard-queries.yml"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": queries}]}))
    command = [promtool, "check", "rules", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_the_provisioned_data_source_and_unique_panel_ids() -> None:
    dashboard = load_dashboard()
    provisioned = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = provisioned["datasources"]
    panels = list(dashboard_panels(dashboard))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    assert "$job" in dashboard_hit_ratio_expr(dashboard)
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "annotation-proxy.yml")
    compose_grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in compose_grafana["volumes"] if volume.startswith("./"))
    assert mounts[f"./{DASHBOARD.parent.relative_to(ROOT)}"] == provider["providers"][0]["options"]["path"]


def test_the_panels_the_issue_asks_for_are_there() -> None:
    text = " ".join(t["expr"] for p in dashboard_panels(load_dashboard()) for t in p.get("targets", []))
    for needed in (
        "job:annotation_proxy_cache_hit_ratio:rate5m",  # hit ratio
        "annotation_proxy_http_requests_total",  # request rate by status
        "histogram_quantile(0.99, sum by (le) (rate(annotation_proxy_http_request_duration_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(annotation_proxy_upstream_request_duration_seconds_bucket",
        "annotation_proxy_upstream_requests_total",  # upstream errors
        'result="stale"',
        "annotation_proxy_cache_available",  # fail-open
        "annotation_proxy_coalesced_requests_total",
        "annotation_proxy_upstream_circuit_state",  # breaker state
        'result="stale_if_error"',  # copies served instead of a Label Studio error
        "annotation_proxy_dependency_up",  # the background dependency checks
        "annotation_proxy_label_studio_credentials_refused",
    ):
        assert needed in text, needed


def test_every_dashboard_query_selects_the_chosen_job_only() -> None:
    """The shared service and the sidecars are scraped under jobs of their own (prometheus-kubernetes*.yml): each
    query selects $job, so the dashboard shows either, never the two mixed."""
    dashboard = load_dashboard()
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "job"
    assert variable["definition"] == "label_values(annotation_proxy_build_info, job)", "every job that runs a proxy"
    selector = re.compile(r"(\b[a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
    unselected = [
        f"{panel['title']}: {name}"
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
        for name, body in selector.findall(target["expr"])
        if not name.startswith(("by", "without")) and 'job=~"$job"' not in body
    ]
    assert not unselected, unselected


def test_the_dashboard_shows_hit_and_miss_latency_side_by_side_and_every_cache_result() -> None:
    panels = list(dashboard_panels(load_dashboard()))

    def latency_panel(cache: str) -> dict[str, Any]:
        (panel,) = [p for p in panels if any(f'cache="{cache}"' in t["expr"] for t in p.get("targets", []))]
        exprs = sorted(t["expr"] for t in panel["targets"])
        assert [e.split("{")[0].rsplit(":", 1)[1] for e in exprs] == ["p50_rate5m", "p99_rate5m"], exprs
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"
        return panel

    hit, miss = latency_panel("hit"), latency_panel("miss")
    assert hit["gridPos"]["y"] == miss["gridPos"]["y"], "side by side"
    assert hit["gridPos"]["x"] + hit["gridPos"]["w"] <= miss["gridPos"]["x"]
    # The cache results panel shows each result as its own series: it groups by result and filters none out.
    (results,) = [p for p in panels if p["title"] == "Answers by cache result"]
    (target,) = results["targets"]
    assert target["expr"].startswith("sum by (result) (")
    assert "result=" not in target["expr"]
    assert all(result in results["description"] for result in proxy_metrics.CACHE_RESULTS)
    # One series per dependency, whichever job (the shared service's, the sidecars') is selected.
    (dependencies,) = [p for p in panels if any("dependency_up" in t["expr"] for t in p.get("targets", []))]
    assert any(t["expr"].startswith("avg by (dependency) (") for t in dependencies["targets"])


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for _, rule in rules() if "alert" in rule}
    tests = load_yaml(DEPLOY / "prometheus" / "tests" / "alerts_test.yml")["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts == fired, f"alerts without a test that fires them: {sorted(alerts - fired)}"
    assert alerts <= quiet, f"alerts without a test that keeps them quiet: {sorted(alerts - quiet)}"
    tested_rules = {Path(f).name for f in load_yaml(DEPLOY / "prometheus" / "tests" / "alerts_test.yml")["rule_files"]}
    assert tested_rules == {p.name for p in rule_files()}


# --- The Dockerfile -------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            env |= dict(re.findall(r"(\w+)=(\S+)", args))
    return env


def routes_of(app: web.Application) -> set[str]:
    return {resource.canonical for resource in app.router.resources()}


def proxy_app(**fields: Any) -> web.Application:
    values: dict[str, Any] = {
        "label_studio_url": "http://label-studio:8080/",
        "label_studio_api_key": "0123456789abcdef0123456789abcdef01234567",
        "redis_url": None,
        "proxy_webhook_secret": SECRET,
    }
    return create_app(Settings(**(values | fields)))


def test_dockerfile_runs_the_proxy_as_documented() -> None:
    instructions = dockerfile_instructions()
    by_name: dict[str, list[str]] = {}
    for instruction, args in instructions:
        by_name.setdefault(instruction, []).append(args)
    (arg,) = [a for a in by_name["ARG"] if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", arg), "a slim Python pinned to a patch"
    assert len(by_name["FROM"]) == 2, "multi-stage: a builder and the final image"
    assert by_name["EXPOSE"] == [str(DEFAULT_PORT)]
    assert by_name["ENTRYPOINT"] == ['["annotation-proxy"]']
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "annotation-proxy" in scripts
    (user,) = by_name["USER"]
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), "a numeric non-root user (runAsNonRoot can verify it)"
    env = dockerfile_env()
    assert env["PROXY_HOST"] == "0.0.0.0"  # noqa: S104 (what the image must say)
    assert env.get("PROXY_PORT", str(DEFAULT_PORT)) == str(DEFAULT_PORT)
    assert {name for name in env if name.startswith(("PROXY_", "LABEL_STUDIO_", "REDIS_"))} <= SETTING_NAMES
    (healthcheck,) = by_name["HEALTHCHECK"]
    assert "/healthz'" in healthcheck
    assert "/healthz" in routes_of(proxy_app())


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert "*" in patterns, "everything else stays out of the build context"
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), source


def locked_pins() -> dict[str, Requirement]:
    lines = (DEPLOY / "requirements.lock").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonical_name(pin.name): pin for pin in pins}


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(requirements: list[Requirement]) -> dict[str, list[Requirement]]:
    """Every distribution that ``requirements`` pull in on this Python, with the requirements that name it,
    read from the installed metadata (the suite's virtualenv holds the runtime dependencies)."""
    seen: dict[str, list[Requirement]] = {}
    pending = [(requirement, "") for requirement in requirements]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonical_name(requirement.name)
        first = name not in seen
        seen.setdefault(name, []).append(requirement)
        if first or requirement.extras:
            for extra_name in ("", *sorted(requirement.extras)):
                for text in importlib.metadata.requires(requirement.name) or []:
                    pending.append((Requirement(text), extra_name))
    return seen


def test_the_lock_is_exactly_what_pyproject_asks_for() -> None:
    """The lock (deploy/requirements.lock, installed by the image) pins the runtime dependencies of pyproject.toml
    and what they pull in, nothing else, each at a version every requirement on it allows. Run deploy/lock.sh when
    this fails."""
    pins = locked_pins()
    assert all(str(pin.specifier).startswith("==") and not pin.extras for pin in pins.values())
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    closure = runtime_closure([Requirement(text) for text in dependencies])
    here = {name for name, pin in pins.items() if pin.marker is None or pin.marker.evaluate()}
    assert set(closure) - set(pins) == set(), "required, not in the lock: run deploy/lock.sh"
    assert here - set(closure) == set(), "locked, not required by pyproject.toml: run deploy/lock.sh"
    for name, requirements in closure.items():
        version = str(pins[name].specifier).removeprefix("==")
        for requirement in requirements:
            assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version}: {requirement}"
    assert "pytest" not in pins
    assert "annotation-proxy" not in pins


def test_the_suite_runs_the_locked_versions() -> None:
    """make installs .venv with the lock as its constraints: the tests exercise the versions the image ships."""
    for name, pin in locked_pins().items():
        if pin.marker is None or pin.marker.evaluate():
            assert pin.specifier.contains(importlib.metadata.version(name)), f"{name}: make installs with the lock"


# --- docker-compose.yml -----------------------------------------------------------------------------------------


def interpolate(value: Any) -> Any:
    """Compose's ${NAME:-default}, with the defaults (the environment of the test does not count)."""
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def settings_from_env(env: dict[str, str], **replace: Any) -> Settings:
    """The Settings a container with this environment gets (the test's own environment kept out)."""
    fields: dict[str, Any] = {name.lower(): value for name, value in env.items()}
    fields.setdefault("redis_url", None)
    fields |= replace
    return Settings(**fields)


def test_compose_proxy_is_configured_with_real_settings_and_ports() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    proxy = services["annotation-proxy"]
    assert proxy["build"] == "."
    env = {name: interpolate(value) for name, value in proxy["environment"].items()}
    assert set(env) <= SETTING_NAMES, f"not settings: {sorted(set(env) - SETTING_NAMES)}"
    settings = settings_from_env(env | dockerfile_env())
    assert settings.proxy_webhook_secret is not None
    assert not is_loopback_host(settings.proxy_host)
    assert settings.client_keys(), "PROXY_HOST=0.0.0.0 in the image: client keys are needed"
    # Ports: the container listens on the image's PROXY_PORT; the host mapping is loopback only.
    for mapping in (port for service in services.values() for port in service.get("ports", [])):
        assert mapping.startswith("127.0.0.1:"), mapping
    (proxy_port,) = proxy["ports"]
    assert proxy_port.rsplit(":", 1)[1] == str(settings.proxy_port)
    # Upstreams are the compose services.
    assert str(settings.label_studio_url).startswith("http://label-studio:8080")
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value().startswith("redis://redis:6379")
    # The health check asks a path the proxy serves, on its port.
    routes = routes_of(proxy_app())
    (url,) = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(proxy["healthcheck"]["test"]))
    assert url[0] == str(settings.proxy_port)
    assert url[1] in routes
    # Draining on SIGTERM fits in the grace period compose gives before SIGKILL.
    assert int(proxy["stop_grace_period"].removesuffix("s")) > settings.proxy_shutdown_timeout
    assert proxy["depends_on"] == {
        "label-studio": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_compose_webhook_job_label_studio_and_redis_fit_the_proxy() -> None:
    services = load_yaml(COMPOSE)["services"]
    proxy_env = {name: interpolate(value) for name, value in services["annotation-proxy"]["environment"].items()}
    job = services["register-webhook"]
    job_env = {name: interpolate(value) for name, value in job["environment"].items()}
    assert job_env["PROXY_WEBHOOK_SECRET"] == proxy_env["PROXY_WEBHOOK_SECRET"]
    assert job_env["LABEL_STUDIO_API_KEY"] == proxy_env["LABEL_STUDIO_API_KEY"]
    assert job_env["WEBHOOK_URL"] == f"http://annotation-proxy:{DEFAULT_PORT}/webhooks/label-studio"
    assert "/webhooks/label-studio" in routes_of(proxy_app())
    assert job["depends_on"]["annotation-proxy"] == {"condition": "service_healthy"}
    assert job["restart"] == "no"
    for volume in job["volumes"]:
        assert (ROOT / volume.split(":")[0]).is_file(), volume

    label_studio = services["label-studio"]
    ls_env = {name: interpolate(value) for name, value in label_studio["environment"].items()}
    assert label_studio["image"] == "heartexlabs/label-studio:1.23.2"
    assert ls_env["LABEL_STUDIO_USER_TOKEN"] == proxy_env["LABEL_STUDIO_API_KEY"]
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    assert re.fullmatch(r"[0-9a-f]{40}", ls_env["LABEL_STUDIO_USER_TOKEN"])

    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "--maxmemory" in redis_command
    assert redis_command[redis_command.index("--save") + 1] == ""
    assert redis_command[redis_command.index("--appendonly") + 1] == "no"

    for name, service in services.items():
        if name != "register-webhook":
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert (ROOT / volume.split(":")[0]).exists(), volume


def test_prometheus_scrapes_the_proxy_where_compose_runs_it() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert "/metrics" in routes_of(proxy_app())
    assert job["static_configs"][0]["targets"] == [f"annotation-proxy:{DEFAULT_PORT}"]
    assert config["rule_files"] == ["rules/*.yml"]
    prometheus = load_yaml(COMPOSE)["services"]["prometheus"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in prometheus["volumes"]


def test_the_shared_service_is_scraped_where_callers_cannot_read_metrics(tmp_path: Path) -> None:
    """The counters are every caller's: a project-scoped key reading them around its own request learned whether
    Label Studio answered 200 or 404 for an id of another project. So the shared service serves /metrics on its
    operations listener only, Prometheus scrapes that, and callers reach the main listener alone."""
    template = example_template("shared")
    (container,) = proxy_containers(template["spec"])
    settings = kubernetes_settings(template["spec"], container, tmp_path)
    metrics_port = settings.proxy_metrics_port
    assert metrics_port is not None
    app = proxy_app(proxy_metrics_port=metrics_port)
    assert "/metrics" not in routes_of(app)
    assert "/metrics" in routes_of(create_ops_app(app))
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    kubernetes = load_yaml(DEPLOY / "prometheus" / "prometheus-kubernetes.yml")
    (sd,) = kubernetes["scrape_configs"][0]["dns_sd_configs"]
    assert sd["port"] == metrics_port
    assert sd["names"][0].startswith("annotation-proxy-pods.")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == metrics_port
    (policy,) = [o for p, o in kubernetes_objects() if o["kind"] == "NetworkPolicy" and p.parent.name == "shared"]
    reaches: dict[str, list[Any]] = {}  # every rule's sources, per port: a later rule for a port adds to it
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            reaches.setdefault(port["port"], []).extend(
                source.get("podSelector", source.get("namespaceSelector")) for source in rule["from"]
            )
    assert set(reaches) == {"http", "metrics"}
    assert reaches["metrics"] == [{"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}]
    assert {"matchLabels": {"annotation-proxy-client": "true"}} not in reaches["metrics"]


# --- Kubernetes -------------------------------------------------------------------------------------------------


def kubernetes_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(KUBERNETES.rglob("*.yaml")) for doc in load_yaml_documents(path)]


def memory_quantity(text: str) -> int:
    """A Kubernetes memory quantity in bytes (the binary suffixes the manifests use)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text.removesuffix(suffix)) * factor
    return int(text)


def proxy_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    containers = pod.get("initContainers", []) + pod["containers"]
    return [c for c in containers if "annotation-proxy" in c["image"]]


def literal_env(container: dict[str, Any], secret_values: dict[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif not entry["valueFrom"]["secretKeyRef"].get("optional", False):
            env[entry["name"]] = secret_values[entry["name"]]
    return env


def probe_target(probe: dict[str, Any], ports: dict[str, int]) -> tuple[int, str]:
    """(port, path) an HTTP probe asks. The kubelet's HTTP probes need no program in the image (an exec probe
    would start a Python for each), and they reach the pod IP: only a listener on all addresses answers them."""
    assert "httpGet" in probe, f"an HTTP probe, not {sorted(probe)}"
    port = probe["httpGet"]["port"]
    return (ports[port] if isinstance(port, str) else port), probe["httpGet"]["path"]


def kubernetes_settings(pod: dict[str, Any], container: dict[str, Any], tmp_path: Path) -> Settings:
    """The Settings the proxy container gets: the image's ENV, the manifest's values, made-up secrets, and the
    client key file the manifest mounts (checked to be where PROXY_CLIENT_KEYS_FILE says) replaced by a local one."""
    secret_values = {
        "LABEL_STUDIO_API_KEY": "0123456789abcdef0123456789abcdef01234567",
        "REDIS_URL": "redis://redis:6379/0",
    }
    env = dockerfile_env() | literal_env(container, secret_values)
    replace: dict[str, Any] = {}
    if "PROXY_CLIENT_KEYS_FILE" in env:
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        (name,) = [n for n, mount in mounts.items() if env["PROXY_CLIENT_KEYS_FILE"].startswith(mount + "/")]
        (item,) = volumes[name]["secret"]["items"]
        assert env["PROXY_CLIENT_KEYS_FILE"] == f"{mounts[name]}/{item['path']}"
        keys_file = tmp_path / "client-keys"
        keys_file.write_text("a-client-key-from-the-secret-0123\n")
        replace["proxy_client_keys_file"] = keys_file
    try:
        return settings_from_env(env, **replace)
    except ValidationError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"the proxy would not start: {exc}")


def test_both_kubernetes_examples_are_there() -> None:
    deployments = [p for p, o in kubernetes_objects() if o["kind"] == "Deployment"]
    assert sorted(p.parent.name for p in deployments) == ["shared", "sidecar"]


@pytest.mark.parametrize("example", ["shared", "sidecar"])
def test_kubernetes_proxy_runs_with_real_settings_probes_and_ports(example: str, tmp_path: Path) -> None:
    (deployment,) = [o for p, o in kubernetes_objects() if o["kind"] == "Deployment" and p.parent.name == example]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = proxy_containers(pod)
    names = {entry["name"] for entry in container["env"]}
    assert names <= SETTING_NAMES, f"not settings: {sorted(names - SETTING_NAMES)}"
    settings = kubernetes_settings(pod, container, tmp_path)
    # Ports and probes: each declared port is one the proxy listens on, on an address the pod IP reaches, and
    # each probe asks a path that listener serves (the operations listener: /metrics, /healthz, /readyz only).
    app = proxy_app()
    listeners = {settings.proxy_port: (settings.proxy_host, routes_of(app))}
    if settings.proxy_metrics_port is not None:
        listeners[settings.proxy_metrics_port] = (settings.proxy_metrics_host, routes_of(create_ops_app(app)))
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    assert ports, "a named port for the probes"
    for name, port in ports.items():
        assert port in listeners, f"port {name} ({port}): the proxy listens on {sorted(listeners)}"
        assert not is_loopback_host(listeners[port][0]), f"port {name} ({port}) listens on loopback only"
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    probes = {kind: probe_target(container[kind], ports) for kind in kinds if kind in container}
    for kind, (port, probe_path) in probes.items():
        assert port in ports.values(), f"{kind} asks port {port}, which the container does not declare"
        assert probe_path in listeners[port][1], f"{kind} asks {probe_path} on port {port}"
    assert probes["livenessProbe"][1] == "/healthz"
    # Every byte bound of this configuration adds up to no more than the container may use (proxy/budget.py).
    budget = settings.memory_budget()
    limit = memory_quantity(container["resources"]["limits"]["memory"])
    assert budget.total <= limit, f"memory budget {budget.in_mib()} MiB over the limit of {limit // 2**20} MiB"
    # Readiness is 503 only while the proxy starts or shuts down (a failing Label Studio or Redis leaves it 200
    # "degraded"): an ordinary probe, with no long failureThreshold to ride out outages, and answered at once
    # (the dependency checks run in the background).
    assert probes["readinessProbe"][1] == "/readyz"
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 15
    assert readiness["timeoutSeconds"] <= 2
    # Draining fits in the grace period (after the preStop hook, which runs first and counts against it).
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_seconds = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    assert pod["terminationGracePeriodSeconds"] > pre_stop_seconds + settings.proxy_shutdown_timeout
    if example == "sidecar":
        assert is_loopback_host(settings.proxy_host), "the sidecar serves annotations on the pod's loopback only"
        assert settings.anonymous_access, "no client keys needed on loopback"
        assert container.get("restartPolicy") == "Always", "a native sidecar"
        # The application starts once the startup probe passes: the operations listener is up before the proxy
        # has set up its cache and Label Studio client, so /healthz there would pass too early.
        assert probes["startupProbe"] == (settings.proxy_metrics_port, "/readyz")
    else:
        assert not is_loopback_host(settings.proxy_host)
        assert settings.client_keys(), "a shared service needs client keys"


@pytest.mark.parametrize("example", ["shared", "sidecar"])
def test_kubernetes_proxy_is_locked_down(example: str) -> None:
    (deployment,) = [o for p, o in kubernetes_objects() if o["kind"] == "Deployment" and p.parent.name == example]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = proxy_containers(pod)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    # Python writes nothing but to /tmp, which is a writable emptyDir.
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}  # noqa: S108


def test_kubernetes_shared_service_has_every_part_and_they_select_the_same_pods() -> None:
    shared = [o for p, o in kubernetes_objects() if p.parent.name == "shared"]
    kinds = sorted(o["kind"] for o in shared)
    assert kinds == sorted(
        [
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "ServiceAccount",
        ]
    )
    (deployment,) = [o for o in shared if o["kind"] == "Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = proxy_containers(deployment["spec"]["template"]["spec"])
    port_names = {port["name"] for port in container["ports"]}
    for obj in shared:
        selector = obj.get("spec", {}).get("selector")
        if obj["kind"] == "Service":
            assert selector.items() <= labels.items()
            assert {port["targetPort"] for port in obj["spec"]["ports"]} <= port_names
        elif obj["kind"] in ("PodDisruptionBudget",):
            assert selector["matchLabels"].items() <= labels.items()
        elif obj["kind"] == "NetworkPolicy":
            assert obj["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
            for rule in obj["spec"]["ingress"]:
                assert {port["port"] for port in rule["ports"]} <= port_names
        elif obj["kind"] == "HorizontalPodAutoscaler":
            assert obj["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
            assert obj["spec"]["minReplicas"] >= 2, "the PodDisruptionBudget needs a second pod"
    secret_refs = {entry["valueFrom"]["secretKeyRef"]["key"] for entry in container["env"] if "valueFrom" in entry}
    assert {"label-studio-api-key", "redis-url"} <= secret_refs
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in {
        o["metadata"]["name"] for o in shared if o["kind"] == "ServiceAccount"
    }


# --- Prometheus in Kubernetes: what its service discovery and relabelling make of the example pods -------------

POD_IP = "10.1.2.3"


def sanitized(name: str) -> str:
    """A Kubernetes label or annotation name as Prometheus' discovery spells it in a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(template: dict[str, Any], phase: str = "Running") -> list[dict[str, str]]:
    """The targets Prometheus' Kubernetes discovery (role: pod) makes of a pod from ``template``: one per declared
    container port, init containers included (a native sidecar is one), and one for a container without ports."""
    common = {
        "__meta_kubernetes_namespace": "apps",
        "__meta_kubernetes_pod_name": "pod-0",
        "__meta_kubernetes_pod_ip": POD_IP,
        "__meta_kubernetes_pod_phase": phase,
    }
    metadata = template["metadata"]
    for key, value in metadata.get("labels", {}).items():
        common[f"__meta_kubernetes_pod_label_{sanitized(key)}"] = value
    for key, value in metadata.get("annotations", {}).items():
        common[f"__meta_kubernetes_pod_annotation_{sanitized(key)}"] = value
        common[f"__meta_kubernetes_pod_annotationpresent_{sanitized(key)}"] = "true"
    spec = template["spec"]
    targets: list[dict[str, str]] = []
    for init, containers in ((False, spec["containers"]), (True, spec.get("initContainers", []))):
        for container in containers:
            base = common | {
                "__meta_kubernetes_pod_container_name": container["name"],
                "__meta_kubernetes_pod_container_image": container["image"],
                "__meta_kubernetes_pod_container_init": str(init).lower(),
            }
            if not container.get("ports"):
                targets.append(base | {"__address__": POD_IP})
            for port in container.get("ports", []):
                targets.append(
                    base
                    | {
                        "__address__": f"{POD_IP}:{port['containerPort']}",
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                        "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
                    }
                )
    return targets


def relabelled(target: dict[str, str], job: dict[str, Any]) -> dict[str, str] | None:
    """``target`` after the job's relabel_configs (keep, drop, replace: the actions the configs use), or None
    if they drop it. Regexes are anchored, as Prometheus anchors them."""
    labels = target | {"job": job["job_name"], "__metrics_path__": job.get("metrics_path", "/metrics")}
    for config in job.get("relabel_configs", []):
        action = config.get("action", "replace")
        value = config.get("separator", ";").join(labels.get(name, "") for name in config.get("source_labels", []))
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        if action == "keep" and match is None:
            return None
        if action == "drop" and match is not None:
            return None
        if action == "replace" and match is not None:
            result = match.expand(re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", config.get("replacement", "$1")))
            if result:
                labels[config["target_label"]] = result
            else:
                labels.pop(config["target_label"], None)
        elif action not in ("keep", "drop", "replace"):
            pytest.fail(f"relabel action {action!r}: not simulated here")
    return labels


def scraped(template: dict[str, Any], job: dict[str, Any], phase: str = "Running") -> list[dict[str, str]]:
    return [t for t in (relabelled(target, job) for target in pod_targets(template, phase)) if t is not None]


def example_template(example: str) -> dict[str, Any]:
    (deployment,) = [o for p, o in kubernetes_objects() if o["kind"] == "Deployment" and p.parent.name == example]
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def test_prometheus_scrapes_each_sidecar_on_its_operations_port(tmp_path: Path) -> None:
    """The sidecar's metrics port, its probes, its pod's prometheus.io/* annotations and the Prometheus job that
    finds it all name PROXY_METRICS_PORT; the job keeps exactly that target of the pod, and no shared pod."""
    template = example_template("sidecar")
    (container,) = proxy_containers(template["spec"])
    env = {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}
    metrics_port = int(env["PROXY_METRICS_PORT"])
    settings = kubernetes_settings(template["spec"], container, tmp_path)
    assert settings.proxy_metrics_port == metrics_port
    assert not is_loopback_host(settings.proxy_metrics_host), "the kubelet and Prometheus reach the pod IP"
    assert metrics_port != settings.proxy_port
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == metrics_port
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe_target(container[kind], ports)[0] == metrics_port, kind
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] in routes_of(create_ops_app(proxy_app()))

    config = load_yaml(DEPLOY / "prometheus" / "prometheus-kubernetes-sidecar.yml")
    assert config["rule_files"] == ["rules/*.yml"]
    (job,) = config["scrape_configs"]
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    (target,) = scraped(template, job)
    assert target["__address__"] == f"{POD_IP}:{metrics_port}"
    assert target["__metrics_path__"] == annotations["prometheus.io/path"]
    assert (target["namespace"], target["pod"]) == ("apps", "pod-0")
    assert scraped(template, job, phase="Succeeded") == []
    # The shared service's pods are annotated too (on their own operations port), and scraped by their job only.
    shared = example_template("shared")
    assert shared["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert scraped(shared, job) == []
    (shared_job,) = load_yaml(DEPLOY / "prometheus" / "prometheus-kubernetes.yml")["scrape_configs"]
    assert shared_job["job_name"] != job["job_name"], "the dashboard tells the two apart by job"
    # And a pod that asks for no scrape, or for another port, is left alone.
    for key, value in (("prometheus.io/scrape", "false"), ("prometheus.io/port", str(settings.proxy_port))):
        other = template | {"metadata": template["metadata"] | {"annotations": annotations | {key: value}}}
        assert scraped(other, job) == [], key


def test_shutdown_defaults_agree_with_the_manifests() -> None:
    """The README's numbers: PROXY_SHUTDOWN_TIMEOUT defaults to 10 s, and every manifest sets it explicitly."""
    assert SHUTDOWN_TIMEOUT == 10
    for path, obj in kubernetes_objects():
        if obj["kind"] == "Deployment":
            (container,) = proxy_containers(obj["spec"]["template"]["spec"])
            env = {entry["name"]: entry.get("value") for entry in container["env"]}
            assert env["PROXY_SHUTDOWN_TIMEOUT"] == "10", path


# --- The compose stack's webhook job (deploy/compose/register_webhook.py) ------------------------------------

REGISTER_WEBHOOK = DEPLOY / "compose" / "register_webhook.py"
LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"
WEBHOOK_URL = "http://annotation-proxy:8080/webhooks/label-studio"


async def run_register_webhook(url: str, **env: str) -> tuple[int, str, str]:
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "LABEL_STUDIO_URL": url,
        "LABEL_STUDIO_API_KEY": LS_TOKEN,
        "WEBHOOK_URL": WEBHOOK_URL,
        "PROXY_WEBHOOK_SECRET": SECRET,
        "WAIT_FOR_LABEL_STUDIO": "5",
    } | env
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REGISTER_WEBHOOK),
        env={k: v for k, v in environment.items() if v},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
async def admin_api(aiohttp_server: ServerFactory) -> tuple[FakeLabelStudioAdmin, str]:
    fake = FakeLabelStudioAdmin(LS_TOKEN)
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("/"))


async def test_webhook_job_creates_a_demo_project_and_registers_once(
    admin_api: tuple[FakeLabelStudioAdmin, str],
) -> None:
    fake, url = admin_api
    status, stdout, stderr = await run_register_webhook(url, CREATE_DEMO_PROJECT="true")
    assert (status, stderr) == (0, "")
    assert [p["title"] for p in fake.projects] == ["annotation-proxy demo"]
    assert fake.webhooks == [
        {
            "id": 1,
            "project": 1,
            "url": WEBHOOK_URL,
            "headers": {"X-Webhook-Secret": SECRET},
            "send_payload": True,
            "send_for_all_actions": True,
            "is_active": True,
        }
    ]
    assert "project 1: webhook created" in stdout
    # Again: nothing changes.
    status, stdout, _ = await run_register_webhook(url, CREATE_DEMO_PROJECT="true")
    assert status == 0
    assert "project 1: webhook unchanged" in stdout
    assert len(fake.projects) == 1
    assert len(fake.webhooks) == 1
    # A new secret replaces the header of the same webhook.
    new_secret = "another-webhook-secret-0123456789"
    status, stdout, _ = await run_register_webhook(url, PROXY_WEBHOOK_SECRET=new_secret)
    assert status == 0
    assert "project 1: webhook updated" in stdout
    (hook,) = fake.webhooks
    assert hook["headers"] == {"X-Webhook-Secret": new_secret}


async def test_webhook_job_registers_every_project_across_pages(admin_api: tuple[FakeLabelStudioAdmin, str]) -> None:
    fake, url = admin_api
    for title in ("a", "b", "c"):
        fake.add_project(title)
    fake.webhooks.append({"id": 99, "project": 2, "url": "http://elsewhere/hook", "headers": {}})
    status, stdout, _ = await run_register_webhook(url, CREATE_DEMO_PROJECT="true")
    assert status == 0
    assert len(fake.projects) == 3, "no demo project when there are projects"
    for project in (1, 2, 3):
        assert [h["url"] for h in fake.webhooks_of(project) if h["url"] == WEBHOOK_URL] == [WEBHOOK_URL]
        assert f"project {project}: webhook created" in stdout
    assert len(fake.webhooks_of(2)) == 2, "another service's webhook is left alone"
    status, stdout, _ = await run_register_webhook(url, WEBHOOK_PROJECTS="2")
    assert status == 0
    assert stdout.splitlines() == [f"register-webhook: project 2: webhook unchanged -> {WEBHOOK_URL}"]


async def test_webhook_job_fails_with_one_line_on_a_rejected_token(
    admin_api: tuple[FakeLabelStudioAdmin, str],
) -> None:
    fake, url = admin_api
    status, _, stderr = await run_register_webhook(url, LABEL_STUDIO_API_KEY="wrong-token")
    assert status == 1
    assert stderr.startswith("register-webhook: GET /api/projects/: HTTP 401")
    assert "Traceback" not in stderr
    assert fake.webhooks == []
    status, _, stderr = await run_register_webhook(url, WEBHOOK_URL="")
    assert status == 2
    assert stderr.strip() == "register-webhook: WEBHOOK_URL is required"

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.budget import container_memory_limit
from proxy.cache.topology import parse_sentinel_url
from proxy.errors import ConfigError
from proxy.settings import Settings, is_loopback_host, load_settings
from tests.support.jwt import make_jwt
from tests.support.processes import SETTING_PREFIXES, clean_environment

LEGACY = "0123456789abcdef0123456789abcdef01234567"
CLIENT_KEY = "client-key-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(name)


def required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://label-studio:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LEGACY)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    required(monkeypatch)
    settings = load_settings()
    assert settings.proxy_host == "127.0.0.1"
    assert settings.proxy_port == 8080
    assert settings.proxy_cache_ttl == 300
    assert settings.proxy_negative_ttl == 30
    assert settings.proxy_upstream_timeout == 10
    assert settings.proxy_max_body_bytes == 10 * 1024 * 1024
    assert settings.proxy_key_prefix == "annotation-proxy:"
    assert settings.redis_url is None
    assert settings.anonymous_access
    assert not settings.uses_personal_access_token


@pytest.mark.parametrize(("value", "on"), [("on", True), ("off", False), ("true", True), ("0", False)])
def test_switches_take_on_and_off(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    required(monkeypatch)
    assert (load_settings().proxy_client_revalidation, load_settings().proxy_compression) == (True, True)
    monkeypatch.setenv("PROXY_CLIENT_REVALIDATION", value)
    monkeypatch.setenv("PROXY_COMPRESSION", value)
    assert (load_settings().proxy_client_revalidation, load_settings().proxy_compression) == (on, on)


def test_client_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    required(monkeypatch)
    monkeypatch.setenv("PROXY_CLIENT_KEYS", f" {CLIENT_KEY} ,second-key-0123456789,, ")
    keys = [k.get_secret_value() for k in load_settings().proxy_client_keys]
    assert keys == [CLIENT_KEY, "second-key-0123456789"]


def test_personal_access_token_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    required(monkeypatch)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", make_jwt({"token_type": "refresh", "exp": 4_000_000_000}))
    assert load_settings().uses_personal_access_token


def test_missing_settings_are_named_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert "LABEL_STUDIO_URL is required" in message
    assert "LABEL_STUDIO_API_KEY is required" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PROXY_PORT", "70000", "PROXY_PORT"),
        ("PROXY_CACHE_TTL", "-1", "PROXY_CACHE_TTL"),
        ("PROXY_CACHE_TTL", "soon", "PROXY_CACHE_TTL"),
        ("LABEL_STUDIO_URL", "ftp://example.com", "LABEL_STUDIO_URL"),
        ("LABEL_STUDIO_URL", "http://user:pw@example.com", "LABEL_STUDIO_URL"),
        ("REDIS_URL", "memcached://localhost", "REDIS_URL"),
        ("PROXY_KEY_PREFIX", "ap{x}:", "PROXY_KEY_PREFIX"),
        ("PROXY_CLIENT_KEYS", "short", "PROXY_CLIENT_KEYS"),
        ("PROXY_ALLOW_ANONYMOUS", "perhaps", "PROXY_ALLOW_ANONYMOUS"),
        ("LABEL_STUDIO_API_KEY", "tok\x01en", "LABEL_STUDIO_API_KEY"),
        ("LABEL_STUDIO_API_KEY", "t\u00f6ken", "LABEL_STUDIO_API_KEY"),
        ("PROXY_STALE_TTL", "-5", "PROXY_STALE_TTL"),
        # Unbounded, these made every lookup a 500 (inf), or every Redis write an error (1e17).
        ("PROXY_CACHE_TTL", "inf", "PROXY_CACHE_TTL"),
        ("PROXY_STALE_IF_ERROR_TTL", "inf", "PROXY_STALE_IF_ERROR_TTL"),
        ("PROXY_NEGATIVE_TTL", "1e17", "PROXY_NEGATIVE_TTL"),
        ("PROXY_STALE_TTL", str(11 * 365 * 24 * 3600), "PROXY_STALE_TTL"),
        ("PROXY_WEBHOOK_SECRET", "short", "PROXY_WEBHOOK_SECRET"),
        ("PROXY_ADMIN_KEYS", "short", "PROXY_ADMIN_KEYS"),
        ("PROXY_METRICS_PORT", "0", "PROXY_METRICS_PORT"),
        ("PROXY_METRICS_PORT", "8080", "PROXY_METRICS_PORT must differ from PROXY_PORT"),  # PROXY_PORT's default
        ("PROXY_CHECK_INTERVAL", "0", "PROXY_CHECK_INTERVAL"),
        ("PROXY_INFLIGHT_MAX_BYTES", str(32 * 1024 * 1024), "PROXY_INFLIGHT_MAX_BYTES must be at least 10 x"),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    required(monkeypatch)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_expired_personal_access_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    required(monkeypatch)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", make_jwt({"token_type": "refresh", "exp": 1_000_000}))
    with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY: the personal access token has expired"):
        load_settings()


def test_errors_never_echo_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    required(monkeypatch)
    secret = "sekrit key with spaces"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", secret)
    monkeypatch.setenv("REDIS_URL", "memcached://user:hunter2@host")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert secret not in str(caught.value)
    assert "hunter2" not in str(caught.value)


class TestAnonymousAccess:
    def test_allowed_on_loopback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        required(monkeypatch)
        monkeypatch.setenv("PROXY_HOST", "::1")
        assert load_settings().anonymous_access

    def test_an_ipv6_host_in_brackets_is_the_address_to_listen_on(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """[::1] passed the loopback check, then could not be listened on (a host name nobody resolves)."""
        required(monkeypatch)
        monkeypatch.setenv("PROXY_HOST", "[::1]")
        monkeypatch.setenv("PROXY_METRICS_HOST", "[::]")
        settings = load_settings()
        assert (settings.proxy_host, settings.proxy_metrics_host) == ("::1", "::")
        assert settings.anonymous_access

    def test_refused_on_other_addresses(self, monkeypatch: pytest.MonkeyPatch) -> None:
        required(monkeypatch)
        monkeypatch.setenv("PROXY_HOST", "0.0.0.0")  # noqa: S104 - the case under test
        with pytest.raises(ConfigError, match=r"PROXY_CLIENT_KEYS is empty and PROXY_HOST=0\.0\.0\.0"):
            load_settings()

    def test_allowed_anywhere_when_asked_for(self, monkeypatch: pytest.MonkeyPatch) -> None:
        required(monkeypatch)
        monkeypatch.setenv("PROXY_HOST", "0.0.0.0")  # noqa: S104
        monkeypatch.setenv("PROXY_ALLOW_ANONYMOUS", "true")
        assert load_settings().anonymous_access

    def test_keys_make_any_address_fine(self, monkeypatch: pytest.MonkeyPatch) -> None:
        required(monkeypatch)
        monkeypatch.setenv("PROXY_HOST", "0.0.0.0")  # noqa: S104
        monkeypatch.setenv("PROXY_CLIENT_KEYS", CLIENT_KEY)
        assert not load_settings().anonymous_access


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.1", False), ("::", False), ("proxy.internal", False)],  # noqa: S104
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("given", "base"),
    [("http://ls:8080", "http://ls:8080/"), ("http://ls:8080/", "http://ls:8080/"), ("https://h/ls", "https://h/ls/"),
     ("https://h/ls/", "https://h/ls/"), ("http://h/label%20studio", "http://h/label%20studio/"),
     ("http://h/ls?", "http://h/ls/"), ("http://h/ls#", "http://h/ls/"), ("http://[::1]:8080/ls", "http://[::1]:8080/ls/")],
)  # fmt: skip
def test_label_studio_url_is_the_base_api_paths_go_below(given: str, base: str) -> None:
    """With or without its trailing slash, a path of LABEL_STUDIO_URL's own is kept: API paths go below it."""
    settings = Settings(label_studio_url=given, label_studio_api_key=LEGACY)  # type: ignore[arg-type]
    assert str(settings.label_studio_url) == base


def test_redacted_configuration_masks_every_secret() -> None:
    settings = Settings(
        label_studio_url="http://ls:8080",  # type: ignore[arg-type]
        label_studio_api_key=LEGACY,  # type: ignore[arg-type]
        redis_url="redis://:hunter2@redis:6379/0?password=hunter3",  # type: ignore[arg-type]
        proxy_client_keys=(CLIENT_KEY,),  # type: ignore[arg-type]
    )
    shown = repr(settings.redacted()) + repr(settings)
    for secret in (LEGACY, "hunter2", "hunter3", CLIENT_KEY):
        assert secret not in shown
    assert settings.redacted()["redis_url"] == "redis://redis:6379/0"


def test_start_without_configuration_exits_with_one_line() -> None:
    env = clean_environment()
    result = subprocess.run(
        [sys.executable, "-m", "proxy"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "LABEL_STUDIO_URL is required" in lines[0]
    assert "Traceback" not in result.stderr


class TestRedisTopologies:
    """REDIS_URL and PROXY_REDIS_MODE are checked together at start-up, and a mistake is one line naming them."""

    SENTINEL_URL = "redis+sentinel://:hunter2@s1:26379,s2,[::1]:26380/annotations/2?sentinel_password=hunter3"

    @pytest.mark.parametrize(
        ("mode", "url"),
        [
            ("standalone", "redis://redis:6379/0"),
            ("standalone", "rediss://redis:6380/0"),
            ("standalone", "unix:///run/redis/redis.sock"),
            ("cluster", "redis://node-1:6379"),
            ("cluster", "rediss://node-1:6379"),
            ("sentinel", SENTINEL_URL),
            ("sentinel", "redis+sentinel://sentinel/annotations"),
            ("sentinel", "redis+sentinel://:Xy[hunter2]z@sentinel/annotations"),  # brackets in a password are fine
            ("standalone", "redis://:a%2Fb%23c@redis:6379/0?socket_timeout=1.5"),  # percent-encoded, and options
            ("standalone", "redis://[::1]:6379"),
            ("standalone", "redis://[fe80::1%25eth0]:6379"),  # an IPv6 address with its zone
            ("standalone", "redis://rédis.example:6379/0/"),  # a host name beyond ASCII, a trailing slash
            ("standalone", "unix://user:a%2Fb@/run/redis.sock?db=2"),
            ("standalone", "rediss://redis:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false&protocol=3"),
            ("cluster", "rediss://node-1:6379/0?ssl_cert_reqs=optional"),
        ],
    )
    def test_each_mode_takes_its_urls(self, monkeypatch: pytest.MonkeyPatch, mode: str, url: str) -> None:
        required(monkeypatch)
        monkeypatch.setenv("REDIS_URL", url)
        monkeypatch.setenv("PROXY_REDIS_MODE", mode)
        assert load_settings().proxy_redis_mode == mode

    @pytest.mark.parametrize(
        ("mode", "url", "expected"),
        [
            ("sentinel", "redis://redis:6379/0", "must start with redis+sentinel://"),
            ("standalone", "redis+sentinel://s1/annotations", "needs PROXY_REDIS_MODE=sentinel"),
            ("cluster", "unix:///run/redis/redis.sock", "must start with one of redis, rediss://"),
            ("sentinel", "redis+sentinel://s1", "must end with /service_name"),
            ("sentinel", "redis+sentinel://s1/annotations/zero", "the database after the service name"),
            ("sentinel", "redis+sentinel://s1:99999/annotations", "a sentinel port"),
            ("sentinel", "redis+sentinel://:pw@/annotations", "names no sentinel"),
            ("sentinel", "redis+sentinel://s1/annotations?password=hunter2", "takes no query parameters but"),
            # A password with characters a URL parser trips over: the error must not quote any of it.
            ("sentinel", "redis+sentinel://s1/annotations?sentinel_password=ab&hunter2", "takes no query parameters"),
            ("sentinel", "redis+sentinel://:ab#hunter2@s1/annotations", "must not contain '#'"),
            ("sentinel", "redis+sentinel://::1/annotations", "must be in brackets"),
            ("standalone", "redis://:Xy[hunter2]z@redis:6379/0", "is not a valid URL"),
            ("cluster", "redis://:hunter2@node-1:99999", "is not a valid URL"),
            # A password's '/', '?', '#' or '@' left unencoded: redis-py would connect elsewhere (localhost, a host
            # named after the user), and the start-up line showed the rest of the URL as a path.
            ("standalone", "redis://:/hunter2+Pw@redis.internal:6380/0", "names no host (percent-encode"),
            ("standalone", "redis://:?hunter2@redis:6380/0", "names no host (percent-encode"),
            ("standalone", "redis://default:42/hunter2@redis", "may only end with /<database number>"),
            ("cluster", "redis://user:12#hunter2@node-1", "may not contain '#' (percent-encode"),
            ("standalone", "unix://:/hunter2@/run/redis.sock", "must be unix://[user:password@]/path/to/socket"),
            ("standalone", "unix://user:12/hunter2@/run/redis.sock?db=1", "must be unix://[user:password@]/path"),
            ("standalone", "unix://:#hunter2@/sock", "may not contain '#'"),
            ("standalone", "unix://:ab@/hunter2@/run/redis.sock", "has an '@' after its host"),
            ("standalone", "redis://user:1?hunter2@redis", "has an '@' after its host"),
            ("standalone", "redis://redis/zero", "may only end with /<database number>"),  # redis-py: db 0
            ("standalone", "redis://:hunter2@redis\\x/0", "has an invalid host name"),
            # What redis-py would refuse only when connecting, with a traceback.
            (
                "standalone",
                "redis://:hunter2@redis:6379/0?socket_timeout=abc",
                "has an invalid 'socket_timeout' option",
            ),
            ("cluster", "redis://:hunter2@node-1:6379?health_check_interval=x", "invalid 'health_check_interval'"),
            # What parse_url lets through and a connection's constructor refuses: every command would fail (a
            # TypeError, never a connection error), or start-up would end in a traceback (a cluster's database).
            ("standalone", "rediss://:hunter2@redis:6380/0?ssl_cert_reqs=hunter2", "invalid 'ssl_cert_reqs' option"),
            ("standalone", "redis://:hunter2@redis/0?ssl_cert_reqs=none", "TLS option 'ssl_cert_reqs', which needs"),
            ("standalone", "redis://:hunter2@redis/0?socket_keepalive=1&timeout=3", "'timeout', which redis-py does"),
            ("standalone", "unix://:hunter2@/run/redis.sock?protocol=7", "has an invalid 'protocol' option"),
            ("cluster", "redis://:hunter2@node-1:6379/3?socket_timeout=1", "names a database other than 0"),
            ("cluster", "rediss://:hunter2@node-1:6379?socket_timeout=1&bogus=1", "'bogus', which"),
            ("replicated", "redis://redis:6379/0", "PROXY_REDIS_MODE"),
        ],
    )
    def test_a_url_that_does_not_fit_the_mode_is_one_line(
        self, monkeypatch: pytest.MonkeyPatch, mode: str, url: str, expected: str
    ) -> None:
        required(monkeypatch)
        monkeypatch.setenv("REDIS_URL", url)
        monkeypatch.setenv("PROXY_REDIS_MODE", mode)
        with pytest.raises(ConfigError) as caught:
            load_settings()
        message = str(caught.value)
        assert expected in message
        assert "\n" not in message
        assert "hunter2" not in message

    def test_the_url_is_logged_without_its_password(self, monkeypatch: pytest.MonkeyPatch) -> None:
        required(monkeypatch)
        monkeypatch.setenv("REDIS_URL", "rediss://user:a%2Fhunter2@[::1]:6380/3?password=hunter3")
        assert load_settings().redacted()["redis_url"] == "rediss://[::1]:6380/3"

    def test_the_sentinel_url_is_logged_without_its_passwords(self, monkeypatch: pytest.MonkeyPatch) -> None:
        required(monkeypatch)
        monkeypatch.setenv("REDIS_URL", self.SENTINEL_URL)
        monkeypatch.setenv("PROXY_REDIS_MODE", "sentinel")
        shown = load_settings().redacted()["redis_url"]
        assert shown == "redis+sentinel://s1:26379,s2:26379,[::1]:26380/annotations/2"

    def test_the_sentinel_url_parts(self) -> None:
        parsed = parse_sentinel_url(self.SENTINEL_URL)
        assert parsed.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26380))
        assert (parsed.service, parsed.db, parsed.username) == ("annotations", 2, None)
        assert (parsed.password, parsed.sentinel_password) == ("hunter2", "hunter3")
        assert "hunter" not in repr(parsed)

    def test_passwords_are_percent_decoded_and_a_plus_stays_a_plus(self) -> None:
        parsed = parse_sentinel_url("redis+sentinel://:a%40b%23c@s1/svc?sentinel_password=d+e%26f")
        assert (parsed.password, parsed.sentinel_password) == ("a@b#c", "d+e&f")


def test_the_operations_listener_may_share_the_port_on_another_address(monkeypatch: pytest.MonkeyPatch) -> None:
    required(monkeypatch)
    monkeypatch.setenv("PROXY_METRICS_PORT", "8080")
    monkeypatch.setenv("PROXY_METRICS_HOST", "127.0.0.2")
    assert load_settings().proxy_metrics_port == 8080
    monkeypatch.setenv("PROXY_HOST", "0.0.0.0")  # noqa: S104 - a wildcard overlaps every address
    monkeypatch.setenv("PROXY_ALLOW_ANONYMOUS", "true")
    with pytest.raises(ConfigError, match="PROXY_METRICS_PORT must differ"):
        load_settings()


def test_the_memory_budget_adds_up_every_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    required(monkeypatch)
    without_redis = load_settings().memory_budget()
    assert without_redis.in_mib() == {
        "baseline": 80,
        "memory_store": 64,
        "hot_tier": 16,
        "render_memo": 16,
        "answer_memo": 4,
        "upstream_bodies": 128,
        "webhook_bodies": 0,
        "total": 308,
    }
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("PROXY_WEBHOOK_SECRET", "a-webhook-secret-0123456789")
    with_redis = load_settings().memory_budget()
    assert (with_redis.memory_store, with_redis.webhook_bodies) == (0, 10 * 1024 * 1024)


def test_the_container_limit_is_read_from_cgroup_v2(tmp_path: Path) -> None:
    limit = tmp_path / "memory.max"
    limit.write_text("536870912\n")
    assert container_memory_limit(limit) == 512 * 1024 * 1024
    limit.write_text("max\n")
    assert container_memory_limit(limit) is None
    assert container_memory_limit(tmp_path / "absent") is None


def test_the_start_up_line_shows_every_setting_and_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    required(monkeypatch)
    monkeypatch.setenv("PROXY_ADMIN_KEYS", "admin-key-0123456789abcdef")
    monkeypatch.setenv("PROXY_WEBHOOK_SECRET", "webhook-secret-0123456789")
    settings = load_settings()
    shown = settings.redacted()
    assert set(Settings.model_fields) <= set(shown)  # derived from the model: no setting left out
    assert shown["proxy_admin_keys"] == "<1 keys>"
    assert shown["proxy_webhook_secret"] == "on"
    text = repr(shown)
    assert "admin-key-0123456789abcdef" not in text
    assert "webhook-secret-0123456789" not in text
    assert settings.label_studio_api_key.get_secret_value() not in text

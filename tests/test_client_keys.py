"""Client keys from the environment and from a file, and per-key project scope."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from proxy.auth import ClientKey, ClientKeys, parse_entry
from proxy.errors import ConfigError, InvalidClientKey, NotAuthenticated
from proxy.settings import load_settings
from tests.support.clock import Clock
from tests.support.processes import SETTING_PREFIXES
from tests.support.proxies import CLIENT_KEY, ProxyFactory

SCOPED_KEY = "scoped-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"


class TestEntries:
    @pytest.mark.parametrize(
        ("entry", "expected"),
        [
            ("0123456789abcdef", ClientKey("0123456789abcdef")),
            ("  0123456789abcdef  ", ClientKey("0123456789abcdef")),
            ("0123456789abcdef:3", ClientKey("0123456789abcdef", frozenset({3}))),
            ("0123456789abcdef:3+14+3", ClientKey("0123456789abcdef", frozenset({3, 14}))),
            ("aGVsbG8rd29ybGQ/Lz0=+/==:7", ClientKey("aGVsbG8rd29ybGQ/Lz0=+/==", frozenset({7}))),
        ],
    )
    def test_valid_entries(self, entry: str, expected: ClientKey) -> None:
        assert parse_entry(entry) == expected

    @pytest.mark.parametrize(
        "entry",
        ["short", "0123456789abcde\u00e9", "0123456789 abcdef", "0123456789,abcdef", "0123456789abcdef:",
         "0123456789abcdef:x", "0123456789abcdef:3,4", "0123456789abcdef:0", "0123456789abcdef:-1",
         "0123456789abcdef:3++4"],
    )  # fmt: skip
    def test_invalid_entries_are_refused_without_echoing_the_key(self, entry: str) -> None:
        with pytest.raises(ValueError, match="key") as caught:
            parse_entry(entry)
        assert "0123456789" not in str(caught.value)

    def test_check_returns_the_scope_of_the_matching_key(self) -> None:
        keys = ClientKeys([ClientKey(CLIENT_KEY), ClientKey(SCOPED_KEY, frozenset({1}))])
        assert keys.check(f"Token {CLIENT_KEY}") is None
        assert keys.check(f"Token {SCOPED_KEY}") == frozenset({1})
        assert keys.check(f"token   {SCOPED_KEY} ") == frozenset({1})
        with pytest.raises(InvalidClientKey):
            keys.check(f"Token {OTHER_KEY}")
        with pytest.raises(NotAuthenticated):
            keys.check(None)
        assert SCOPED_KEY not in repr(keys) + repr(ClientKey(SCOPED_KEY))


class TestKeyFile:
    @pytest.fixture(autouse=True)
    def environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in list(os.environ):
            if name.startswith(SETTING_PREFIXES):
                monkeypatch.delenv(name)
        monkeypatch.setenv("LABEL_STUDIO_URL", "http://label-studio:8080")
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0123456789abcdef0123456789abcdef01234567")
        monkeypatch.setenv("PROXY_HOST", "0.0.0.0")  # noqa: S104 - keys are what make this allowed

    @pytest.fixture
    def key_file(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
        """PROXY_CLIENT_KEYS_FILE, for the test to write."""
        path = tmp_path / "keys"
        monkeypatch.setenv("PROXY_CLIENT_KEYS_FILE", str(path))
        return path

    def test_keys_come_from_the_file_and_the_variable(self, monkeypatch: pytest.MonkeyPatch, key_file: Path) -> None:
        key_file.write_text(f"# team A\n{SCOPED_KEY}:1+2\n\n   {OTHER_KEY}\n")
        monkeypatch.setenv("PROXY_CLIENT_KEYS", CLIENT_KEY)
        keys = load_settings().client_keys()
        assert keys == [ClientKey(CLIENT_KEY), ClientKey(SCOPED_KEY, frozenset({1, 2})), ClientKey(OTHER_KEY)]

    def test_keys_in_a_file_alone_close_the_open_door(self, key_file: Path) -> None:
        key_file.write_text(f"{OTHER_KEY}\n")
        assert not load_settings().anonymous_access

    def test_a_missing_file_is_named(self, key_file: Path) -> None:  # left unwritten
        with pytest.raises(ConfigError, match="PROXY_CLIENT_KEYS_FILE"):
            load_settings()

    def test_a_bad_entry_names_its_line_but_not_its_key(self, key_file: Path) -> None:
        key_file.write_text(f"{OTHER_KEY}\n{SCOPED_KEY}:one\n")
        with pytest.raises(ConfigError, match=r"PROXY_CLIENT_KEYS_FILE: .*entry 2") as caught:
            load_settings()
        assert SCOPED_KEY not in str(caught.value)

    def test_one_key_with_two_scopes_is_refused(self, monkeypatch: pytest.MonkeyPatch, key_file: Path) -> None:
        # Left as it was, the later entry's scope won: here the whole instance for a key meant for project 1.
        key_file.write_text(f"{OTHER_KEY}\n{SCOPED_KEY}\n")
        monkeypatch.setenv("PROXY_CLIENT_KEYS", f"{SCOPED_KEY}:1,{CLIENT_KEY}")
        with pytest.raises(ConfigError, match=r"entries 1 and 4 .* different project scopes") as caught:
            load_settings()
        assert SCOPED_KEY not in str(caught.value)

    def test_one_key_twice_with_one_scope_is_one_key(self, monkeypatch: pytest.MonkeyPatch, key_file: Path) -> None:
        key_file.write_text(f"{SCOPED_KEY}:2+1\n")
        monkeypatch.setenv("PROXY_CLIENT_KEYS", f"{SCOPED_KEY}:1+2")  # as a rotation may leave it for a while
        assert {key.scope for key in load_settings().client_keys()} == {frozenset({1, 2})}


class TestProjectScope:
    async def test_a_scoped_key_sees_only_its_projects_even_on_cache_hits(
        self, make_proxy: ProxyFactory, redis_url: str
    ) -> None:
        proxy = await make_proxy(redis_url=redis_url, proxy_client_keys=(CLIENT_KEY, f"{SCOPED_KEY}:1"))
        proxy.fake.add_annotation(project=1)
        proxy.fake.add_annotation(project=2)
        for annotation_id in (1, 2):  # cached by the unscoped key first
            assert (await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())).status == 200
        own = await proxy.client.get("/api/annotations/1/", headers=proxy.auth(SCOPED_KEY))
        assert own.status == 200
        other = await proxy.client.get("/api/annotations/2/", headers=proxy.auth(SCOPED_KEY))
        missing = await proxy.client.get("/api/annotations/3/", headers=proxy.auth(SCOPED_KEY))
        assert other.status == missing.status == 404
        other_body, missing_body = json.loads(await other.read()), json.loads(await missing.read())
        assert other_body["detail"] == missing_body["detail"] == "No Annotation matches the given query."
        assert "Cache-Status" not in other.headers  # nothing hints that the annotation is cached
        assert "ETag" not in other.headers

    async def test_a_scoped_key_cannot_probe_with_if_none_match(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(proxy_client_keys=(CLIENT_KEY, f"{SCOPED_KEY}:1"))
        proxy.fake.add_annotation(project=2)
        etag = (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).headers["ETag"]
        probe = await proxy.client.get("/api/annotations/1/", headers={**proxy.auth(SCOPED_KEY), "If-None-Match": etag})
        assert probe.status == 404


def comparable(headers: Mapping[str, str], body: bytes) -> tuple[list[tuple[str, str]], dict[str, object]]:
    """Every header but the ones that differ per response anyway (request id, date), and the body but its random
    error id."""
    kept = [(name, value) for name, value in headers.items() if name not in ("X-Request-ID", "Date")]
    document = json.loads(body) if body else {}
    document.pop("id", None)
    return kept, document


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("variant", ["GET", "HEAD", "If-None-Match"])
async def test_another_projects_annotation_is_answered_exactly_like_one_that_does_not_exist(
    make_proxy: ProxyFactory, request: pytest.FixtureRequest, backend: str, variant: str
) -> None:
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    proxy = await make_proxy(redis_url=redis_url, proxy_client_keys=(CLIENT_KEY, f"{SCOPED_KEY}:1"))
    proxy.fake.add_annotation(project=2)  # id 1, another project's
    etag = (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).headers["ETag"]
    method = "HEAD" if variant == "HEAD" else "GET"
    headers = proxy.auth(SCOPED_KEY) | ({"If-None-Match": etag} if variant == "If-None-Match" else {})
    answers: dict[int, list[tuple[int, object]]] = {1: [], 99: []}
    for _ in range(2):  # the first asks Label Studio for 99 (a miss), the second is a remembered 404
        for annotation_id in (1, 99):
            response = await proxy.client.request(method, f"/api/annotations/{annotation_id}/", headers=headers)
            answers[annotation_id].append((response.status, comparable(response.headers, await response.read())))
    assert answers[1] == answers[99]
    assert answers[1][0][0] == 404


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_only_if_cached_tells_a_scoped_key_nothing_of_other_projects(
    make_proxy: ProxyFactory, request: pytest.FixtureRequest, clock: Clock, steady: Clock, backend: str
) -> None:
    """Asked only-if-cached, another project's cached annotation answered 404 (for as long as the store kept it),
    an id that does not exist 504 once its remembered 404 lapsed: which ids exist elsewhere, and which other
    callers read, without a fetch. Now both are a 504, as if nothing were cached for this key."""
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    proxy = await make_proxy(redis_url=redis_url, proxy_client_keys=(CLIENT_KEY, f"{SCOPED_KEY}:1"))
    proxy.fake.add_annotation(project=2)  # id 1, another project's
    proxy.fake.add_annotation(project=1)  # id 2, the scoped key's own
    for annotation_id in (1, 2):  # read by the unscoped key in its normal work
        assert (await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())).status == 200
    scoped = proxy.auth(SCOPED_KEY)
    assert (await proxy.client.get("/api/annotations/99/", headers=scoped)).status == 404  # remembered
    only = scoped | {"Cache-Control": "only-if-cached"}

    async def answers() -> list[tuple[int, object]]:
        found = []
        for annotation_id in (1, 99):
            response = await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=only)
            found.append((response.status, comparable(response.headers, await response.read())))
        return found

    while_remembered = await answers()  # the hot tier's copies, then the store's
    assert while_remembered[0] == while_remembered[1]
    assert while_remembered[0][0] == 504
    clock.now += proxy.settings.proxy_negative_ttl + 1  # the 404 lapses; the other project's version stays
    steady.now += proxy.settings.proxy_negative_ttl + 1
    lapsed = await answers()
    assert lapsed[0] == lapsed[1] == while_remembered[0]
    own = await proxy.client.get("/api/annotations/2/", headers=only)
    assert own.status == 200
    assert len(proxy.fake.annotation_gets()) == 3  # 1, 2 and 99 once each: only-if-cached asked nothing


async def test_a_scoped_key_makes_no_fetch_for_another_projects_cached_annotation(
    make_proxy: ProxyFactory, clock: Clock
) -> None:
    proxy = await make_proxy(proxy_client_keys=(CLIENT_KEY, f"{SCOPED_KEY}:1"), proxy_hot_ttl=0)
    proxy.fake.add_annotation(project=2)
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    clock.now += proxy.settings.proxy_cache_ttl + 1  # stale: any reader would revalidate it
    for _ in range(5):
        assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth(SCOPED_KEY))).status == 404
    assert len(proxy.fake.annotation_gets(1)) == 1  # only the unscoped key's fetch

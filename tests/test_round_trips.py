"""What a lookup costs Redis, counted with MONITOR on a real server: a miss is two round trips (one script reads
and claims the fetch, one writes, announces and releases it), a hit the hot tier does not hold is one."""

from __future__ import annotations

from tests.support.proxies import ProxyFactory
from tests.support.redis_monitor import recorded_commands


async def test_a_miss_is_two_round_trips_and_a_hit_one(make_proxy: ProxyFactory, redis_url: str) -> None:
    # No hot tier: every hit reads Redis. No dependency check during the test (one ran at start-up).
    proxy = await make_proxy(redis_url=redis_url, proxy_hot_ttl=0, proxy_check_interval=300)
    for _ in range(3):
        proxy.fake.add_annotation()

    async def get(annotation_id: int) -> str:
        response = await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())
        assert response.status == 200
        return response.headers["Cache-Status"]

    await get(1)  # the scripts are loaded into Redis on first use; from then on each runs as one EVALSHA
    await get(1)
    with recorded_commands(redis_url) as miss:
        assert (await get(2)).startswith("annotation-proxy; fwd=miss; fwd-status=200; stored")
    assert miss == ["EVALSHA", "EVALSHA"]
    with recorded_commands(redis_url) as hit:
        assert (await get(2)).startswith("annotation-proxy; hit")
    assert hit == ["EVALSHA"]


async def test_a_404_is_two_round_trips_too(make_proxy: ProxyFactory, redis_url: str) -> None:
    proxy = await make_proxy(redis_url=redis_url, proxy_hot_ttl=0, proxy_check_interval=300)
    proxy.fake.add_annotation()
    await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    await proxy.client.get("/api/annotations/404/", headers=proxy.auth())  # loads the 404's script
    with recorded_commands(redis_url) as miss:
        response = await proxy.client.get("/api/annotations/405/", headers=proxy.auth())
        assert response.status == 404
    assert miss == ["EVALSHA", "EVALSHA"]

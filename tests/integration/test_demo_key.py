"""The demo's API key: it expires unless renewed, so a demo killed outright (whose
clean-up never runs) does not leave a working key behind for long."""

from __future__ import annotations

import asyncio

import pytest

from services import demo
from services.runtime.adapters.redis import connect_redis
from services.runtime.apikeys import ApiKeyStore
from services.runtime.config import Settings
from services.runtime.keys import Keys
from tests.integration.runtime_kit import eventually

pytestmark = pytest.mark.integration


async def test_the_demo_s_key_is_renewed_while_it_runs_and_forgotten_at_its_end(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "KEY_TTL_S", 5.0)
    monkeypatch.setattr(demo, "KEY_RENEW_S", 0.05)
    client = connect_redis(settings)
    issued = await demo._demo_key(settings)
    key_id = issued.record.key_id
    where = Keys(demo.NAMESPACE).api_key_id(key_id)
    keeper = asyncio.create_task(demo._keep_key(settings, key_id))
    try:
        assert 0 < await client.pttl(where) <= 5_000
        # Shorten it by hand: only a renewal can give it its five seconds back.
        await client.pexpire(where, 2_000)

        async def renewed() -> bool:
            return await client.pttl(where) > 2_000

        await eventually(renewed, timeout=10, what="the demo's key to be renewed")
        assert not keeper.done()
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await demo._forget_key(settings, key_id)
    try:
        store = ApiKeyStore(client, namespace=demo.NAMESPACE)
        assert key_id not in {k.key_id for k in await store.list(demo.DEMO_TENANT)}
        assert await client.exists(where) == 0
        await demo._forget_key(settings, key_id)  # gone already: no error
    finally:
        await client.aclose()

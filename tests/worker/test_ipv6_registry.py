"""An IPv6 registry (`[::1]:<port>/team/app`, SPEC §6) end to end: registered through the API,
synced by the worker's registry client, read back through every resource URI."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeUser, unique
from tests.support.registry import RegistryServer, apush_image
from tests.worker.conftest import OpenRuntime
from tests.worker.helpers import get, register
from worker import sync
from worker.registry import RegistryClient


@pytest.fixture(scope="module")
def ipv6_registry() -> Iterator[RegistryServer]:
    with RegistryServer(address="::1") as reg:
        yield reg


async def test_an_ipv6_registry_is_registered_synced_and_served(
    client: TestClient, make_user: MakeUser, ipv6_registry: RegistryServer, runtime: OpenRuntime,
) -> None:
    user = await make_user()
    repo = f"{unique('v6')}/app"
    await apush_image(ipv6_registry.url, repo, "v1", {"created": "2024-03-04T05:06:07Z"})
    name = f"{ipv6_registry.host}/{repo}"
    assert name.startswith("[::1]:")
    iid = await register(client, user, name)

    rt = await runtime(ipv6_registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED

    image = await get(client, user, f"/api/v1/image/{name}/")
    assert image["state"] == "Success" and image["name"] == name
    assert image["tags"] == [f"/api/v1/image/{name}/tag/v1/"]
    assert image["registry"] == f"/api/v1/registry/{ipv6_registry.host}/"
    tag = await get(client, user, image["tags"][0])
    assert tag["full_name"] == f"{name}:v1" and tag["layer"] is not None
    registry = await get(client, user, image["registry"])
    assert registry["host"] == ipv6_registry.host
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["error"] is None


async def test_insecure_registries_match_however_the_address_is_written() -> None:
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, insecure_hosts=frozenset({"[0:0:0:0:0:0:0:1]:5000", "Reg.Example:80"}))
        assert client.base_url("[::1]:5000") == "http://[::1]:5000"
        assert client.base_url("reg.example:80") == "http://reg.example:80"
        assert client.base_url("[::1]:5001") == "https://[::1]:5001"

"""Two tenants on one mesh, each with its own API key: neither sees the other's runs,
streams, answers or search results, whatever ids it tries."""

from __future__ import annotations

import grpc
import pytest
from agentflux.v1 import gateway_pb2, types_pb2

from tests.e2e.conftest import Mesh, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_a_tenant_never_sees_another_tenants_runs_answers_or_search_results(
    mesh: Mesh,
) -> None:
    await mesh.start()
    mine = mesh.gateway  # tenant acme
    theirs = mesh.client(await mesh.new_key("globex"))
    run = await mesh.submit("remember that the secret word is marmalade")
    done = await mesh.finished(run.run_id)
    assert done.status == types_pb2.RUN_STATUS_COMPLETED

    async def indexed() -> bool:
        found = await mine.SearchResponses(gateway_pb2.SearchResponsesRequest(query="marmalade"))
        return any(r.run_id == run.run_id for r in found.results)

    await eventually(indexed, what="acme's answer in acme's search")
    found = await theirs.SearchResponses(gateway_pb2.SearchResponsesRequest(query="marmalade"))
    assert list(found.results) == []
    for call in [
        theirs.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id)),
        theirs.CancelRun(gateway_pb2.CancelRunRequest(run_id=run.run_id)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in theirs.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id)):
            pass
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    listed = await theirs.ListRuns(gateway_pb2.ListRunsRequest())
    assert list(listed.runs) == []
    # Their agent's memory and retrieval are theirs too: the other tenant's agent, asked
    # in a conversation of the same id, knows nothing of the secret.
    asked = await theirs.Submit(
        gateway_pb2.SubmitRequest(
            prompt="what did I say about marmalade", conversation_id=run.conversation_id
        )
    )
    theirs_done = (await mesh.events_of(theirs, asked.run.run_id))[-1].finished
    assert theirs_done.status == types_pb2.COMPLETION_STATUS_COMPLETED
    assert theirs_done.answer.text == "I found nothing about marmalade."

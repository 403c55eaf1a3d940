"""The chat page's HTTP client against a chat API stand-in on loopback: streaming, models, human errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from chat_page.client import (
    ApiKeyRejectedError,
    ApiNotReadyError,
    ApiUnreachableError,
    ChatApiError,
    ChatClient,
    ChatTurn,
    ModelCard,
)

from tests.chat_page.stand_in import API_KEY, PIECES, ChatStandIn

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]


async def collect(client: ChatClient, turn: ChatTurn) -> tuple[list[str], str | None, str | None]:
    async with client.chat(turn) as reply:
        pieces = [piece async for piece in reply.pieces()]
        return pieces, reply.served_model, reply.adapter_version


async def test_streams_pieces_with_served_version(stand_in: ChatStandIn) -> None:
    """The reply arrives piece by piece, with the served adapter and version from the response headers."""
    client = ChatClient(stand_in.url, API_KEY)
    pieces, served, version = await collect(client, ChatTurn("live", MESSAGES, temperature=0.0, max_tokens=9))
    assert pieces == PIECES
    assert (served, version) == ("alpha", "alpha-1-v1")
    assert stand_in.requests == [{"model": "live", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 9,
                                  "stream": True}]


async def test_models_list_parsed(stand_in: ChatStandIn) -> None:
    """`/v1/models` becomes cards in the API's order: base (no parent), alias routed to its adapter, adapters, each
    with its default temperature when the API gives one."""
    cards = await ChatClient(stand_in.url + "/", API_KEY).list_models()
    assert cards == [
        ModelCard("tiny", "tiny", None, None, 0.2),
        ModelCard("live", "alpha", "tiny", "alpha-1-v1", 0.2),
        ModelCard("alpha", "alpha", "tiny", "alpha-1-v1", 0.2),
        ModelCard("beta", "beta", "tiny", "beta-1-v2", None),
    ]
    assert [card.is_base for card in cards] == [True, False, False, False]


async def test_turn_without_temperature_leaves_it_to_the_server(stand_in: ChatStandIn) -> None:
    """A turn with no temperature sends none, so the server applies the model's default."""
    await collect(ChatClient(stand_in.url, API_KEY), ChatTurn("live", MESSAGES, max_tokens=9))
    assert stand_in.requests == [{"model": "live", "messages": MESSAGES, "max_tokens": 9, "stream": True}]


async def test_wrong_key_is_a_clear_message(stand_in: ChatStandIn) -> None:
    """A 401 reads "API key rejected (401)", for the model list and for a chat."""
    client = ChatClient(stand_in.url, "wrong")
    with pytest.raises(ApiKeyRejectedError, match=r"^API key rejected \(401\)$"):
        await client.list_models()
    with pytest.raises(ApiKeyRejectedError, match=r"^API key rejected \(401\)$"):
        await collect(client, ChatTurn("live", MESSAGES))
    assert stand_in.requests == []


async def test_connection_refused_is_a_clear_message(free_port: Callable[[], int]) -> None:
    """Nothing listening reads "chat API not reachable at URL" (and is a ConnectionError too)."""
    url = f"http://127.0.0.1:{free_port()}"
    client = ChatClient(url, API_KEY, connect_timeout_s=2)
    with pytest.raises(ApiUnreachableError, match=f"^chat API not reachable at {url}$") as caught:
        await collect(client, ChatTurn("live", MESSAGES))
    assert isinstance(caught.value, ConnectionError)
    with pytest.raises(ApiUnreachableError, match="not reachable"):
        await client.list_models()


async def test_not_ready_names_503(stand_in: ChatStandIn) -> None:
    """A 503 says the API is not ready and passes on the server's reason."""
    stand_in.status = 503
    with pytest.raises(ApiNotReadyError, match=r"not ready \(503\): The engine is busy or restarting"):
        await collect(ChatClient(stand_in.url, API_KEY), ChatTurn("live", MESSAGES))


async def test_other_errors_carry_status_and_message(stand_in: ChatStandIn) -> None:
    """Any other error status shows the status code and the OpenAI error message, nothing more."""
    stand_in.status = 400
    with pytest.raises(ChatApiError, match=r"^chat API error \(400\): The model 'nope' does not exist$"):
        await collect(ChatClient(stand_in.url, API_KEY), ChatTurn("nope", MESSAGES))


async def test_error_event_mid_stream_raises(stand_in: ChatStandIn) -> None:
    """An error event after some text raises from `pieces()` once the earlier pieces were delivered."""
    stand_in.fail_mid_stream = True
    received: list[str] = []
    with pytest.raises(ChatApiError, match="failed mid-reply: The engine failed"):
        async with ChatClient(stand_in.url, API_KEY).chat(ChatTurn("beta", MESSAGES)) as reply:
            async for piece in reply.pieces():
                received.append(piece)
    assert received == PIECES[:1]


def test_key_kept_out_of_repr() -> None:
    """The client's repr names the URL, never the key."""
    assert "secret" not in repr(ChatClient("http://127.0.0.1:1", "secret"))

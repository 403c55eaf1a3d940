"""The page's handlers without a browser: conversation building, streamed updates, notes, adapter choices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chat_page.client import ChatClient
from chat_page.config import PageConfig
from chat_page.page import NOTE_MARK, ChatHandlers, conversation

from tests.chat_page.stand_in import API_KEY, PIECES, ChatStandIn


def text(role: str, value: str) -> dict[str, Any]:
    """A history entry as Gradio 6 hands it over (content normalized to text parts)."""
    return {"role": role, "content": [{"type": "text", "text": value}], "metadata": None, "options": None}


def handlers(url: str, key: str = API_KEY) -> ChatHandlers:
    return ChatHandlers(ChatClient(url, key, connect_timeout_s=2), PageConfig(api_url=url))


async def run(h: ChatHandlers, message: str, history: list[dict[str, Any]], model: str | None = "beta",
              system: str = "") -> list[tuple[str, str]]:
    return [update async for update in h.respond(message, history, model, system, 0.0, 32.0)]


def test_conversation_sends_whole_history_with_system() -> None:
    """Every earlier turn is sent in order after the system prompt, then the new message."""
    history = [text("user", "hi"), {"role": "assistant", "content": "hello"}, text("user", "more"),
               text("assistant", "ok")]
    assert conversation(history, "last", "  be brief ") == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": "last"},
    ]


def test_conversation_drops_notes_and_their_requests() -> None:
    """A failed turn (user message answered by a page note) is not sent again; no system prompt means none sent."""
    history = [text("user", "lost"), text("assistant", NOTE_MARK + "chat API not reachable at x"),
               text("user", "hi"), text("assistant", "hello")]
    assert conversation(history, "again", "") == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]


async def test_respond_streams_growing_text_and_version(stand_in: ChatStandIn) -> None:
    """Updates grow piece by piece; the status names the served adapter and version; the history is sent."""
    updates = await run(handlers(stand_in.url), "again", [text("user", "hi"), text("assistant", "hello")],
                        system="sys")
    assert [u[0] for u in updates[1:]] == ["Hel", "Hello", "Hello world"]
    assert updates[-1][1] == "Served by **beta** · version `beta-1-v2`"
    sent = stand_in.requests[0]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("beta", 0.0, 32)
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]


async def test_respond_without_pick_uses_alias(stand_in: ChatStandIn) -> None:
    """With no adapter picked yet, the alias is asked and the status shows what it routes to."""
    updates = await run(handlers(stand_in.url), "hi", [], model=None)
    assert stand_in.requests[0]["model"] == "live"
    assert updates[-1] == ("".join(PIECES), "Served by **alpha** · version `alpha-1-v1`")


async def test_wrong_key_becomes_a_note(stand_in: ChatStandIn) -> None:
    """A rejected key ends the reply with the note "API key rejected (401)" in the chat and the status."""
    updates = await run(handlers(stand_in.url, key="wrong"), "hi", [])
    assert updates[-1] == (NOTE_MARK + "API key rejected (401)",) * 2


async def test_unreachable_api_becomes_a_note(free_port: Callable[[], int]) -> None:
    """Nothing listening ends the reply with "chat API not reachable at URL"."""
    url = f"http://127.0.0.1:{free_port()}"
    updates = await run(handlers(url), "hi", [])
    assert updates[-1][0] == f"{NOTE_MARK}chat API not reachable at {url}"


async def test_mid_stream_failure_keeps_partial_text(stand_in: ChatStandIn) -> None:
    """Text already streamed stays, followed by the note."""
    stand_in.fail_mid_stream = True
    reply, status = (await run(handlers(stand_in.url), "hi", []))[-1]
    assert reply.startswith("Hel\n\n" + NOTE_MARK) and "failed mid-reply" in reply
    assert status.startswith(NOTE_MARK)


async def test_refresh_lists_models_and_keeps_pick(stand_in: ChatStandIn) -> None:
    """Refresh labels each model with its version, keeps the current pick, and shows where the alias routes."""
    choices, value, status, _ = await handlers(stand_in.url).refresh("beta")
    assert choices == [("tiny (base model)", "tiny"), ("live → alpha (alpha-1-v1)", "live"),
                       ("alpha (alpha-1-v1)", "alpha"), ("beta (beta-1-v2)", "beta")]
    assert value == "beta"
    assert "`live` → **alpha**" in status
    assert (await handlers(stand_in.url).refresh(None)).value == "live"


async def test_refresh_gives_the_picked_models_default_temperature(stand_in: ChatStandIn) -> None:
    """The slider's value comes from the kept model's `sampling_defaults`; none given, the slider is left alone."""
    assert (await handlers(stand_in.url).refresh(None)).temperature == 0.2
    assert (await handlers(stand_in.url).refresh("beta")).temperature is None


async def test_refresh_when_down_keeps_pick_and_says_why(free_port: Callable[[], int]) -> None:
    """With the API down, refresh lists nothing, keeps the pick, shows the reason and leaves the slider alone."""
    url = f"http://127.0.0.1:{free_port()}"
    assert await handlers(url).refresh("beta") == ([], "beta", f"{NOTE_MARK}chat API not reachable at {url}", None)

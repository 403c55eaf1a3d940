"""The Gradio page: a streaming chat with an adapter picker, system prompt and sampling controls.

`ChatHandlers` holds the event logic and returns plain values (tests call it without a browser); `build_page`
lays out the Blocks and wires the events. The temperature slider starts at the picked model's default, read from
the chat API's `/v1/models` (`sampling_defaults`) on page load and on "Refresh adapters". Every request sends the whole conversation. API failures appear as a
marked assistant note in the chat and in the status line, never as a stack trace; notes (and the user message
that got one) are left out of later requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import gradio as gr

from .client import ChatApiError, ChatClient, ChatReply, ChatTurn, ModelCard
from .config import PageConfig

NOTE_MARK = "⚠️ "
#: The temperature slider's value until the chat API gives the model's default (OpenAI's default).
FALLBACK_TEMPERATURE = 1.0
Choice = tuple[str, str]


class ModelsView(NamedTuple):
    """What a refresh shows: the picker's choices and value, the status line, and the picked model's default
    temperature for the slider (None: the API did not say, the slider stays as it is)."""

    choices: list[Choice]
    value: str | None
    status: str
    temperature: float | None = None


def message_text(content: Any) -> str:
    """The text of a Gradio message's content (a string, a text part, or a list of parts; files are skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, list | tuple):
        return "".join(message_text(part) for part in content)
    return ""


def conversation(history: Sequence[dict[str, Any]], message: str, system: str) -> list[dict[str, str]]:
    """OpenAI messages for the whole chat so far plus `message`, led by the system prompt when there is one."""
    messages = [{"role": "system", "content": system.strip()}] if system.strip() else []
    for item in history:
        role, text = item.get("role"), message_text(item.get("content"))
        if role == "assistant" and text.startswith(NOTE_MARK):
            if messages and messages[-1]["role"] == "user":
                messages.pop()  # the request that failed is not part of the conversation
            continue
        if role in ("user", "assistant") and text:
            messages.append({"role": role, "content": text})
    messages.append({"role": "user", "content": message})
    return messages


def model_choices(cards: Sequence[ModelCard]) -> list[Choice]:
    """Dropdown (label, value) pairs that show what each name serves and its version."""
    choices = []
    for card in cards:
        if card.is_base:
            label = f"{card.id} (base model)"
        elif card.root != card.id:
            label = f"{card.id} → {card.root}" + (f" ({card.version})" if card.version else "")
        else:
            label = card.id + (f" ({card.version})" if card.version else "")
        choices.append((label, card.id))
    return choices


def served_status(reply: ChatReply, asked: str) -> str:
    """The status line for an open reply: the served adapter and version from the response headers."""
    served = reply.served_model or asked
    version = f" · version `{reply.adapter_version}`" if reply.adapter_version else " · no adapter version"
    return f"Served by **{served}**{version}"


def note(message: str) -> str:
    return NOTE_MARK + message


class ChatHandlers:
    """What the page's events do, in plain values."""

    def __init__(self, client: ChatClient, config: PageConfig) -> None:
        self._client = client
        self._config = config

    async def refresh(self, current: str | None) -> ModelsView:
        """Choices for the adapter picker, the value to keep selected, a status line, and that model's default
        temperature."""
        try:
            cards = await self._client.list_models()
        except ChatApiError as exc:
            return ModelsView([], current, note(str(exc)))
        names = [card.id for card in cards]
        keep = next((n for n in (current, self._config.default_model) if n in names), names[0] if names else None)
        alias = next((c for c in cards if not c.is_base and c.root != c.id), None)
        routed = ""
        if alias is not None:
            routed = f" · `{alias.id}` → **{alias.root}**" + (f" `{alias.version}`" if alias.version else "")
        temperature = next((card.temperature for card in cards if card.id == keep), None)
        return ModelsView(model_choices(cards), keep, f"Connected to `{self._client.api_url}`{routed}", temperature)

    async def respond(
        self, message: str, history: list[dict[str, Any]], model: str | None, system: str, temperature: float,
        max_tokens: float,
    ) -> AsyncIterator[tuple[str, str]]:
        """Stream the reply as (text so far, status line); an API failure becomes a note."""
        asked = model or self._config.default_model
        turn = ChatTurn(model=asked, messages=conversation(history, message, system or ""),
                        temperature=float(temperature), max_tokens=int(max_tokens))
        text, status = "", f"Waiting for **{asked}**…"
        yield text, status
        try:
            async with self._client.chat(turn) as reply:
                status = served_status(reply, asked)
                async for piece in reply.pieces():
                    text += piece
                    yield text, status
        except ChatApiError as exc:
            failure = note(str(exc))
            yield (f"{text}\n\n{failure}" if text else failure), failure
            return
        if not text:
            yield "(empty reply)", status


def build_page(client: ChatClient, config: PageConfig) -> gr.Blocks:
    """The chat page for one chat API."""
    handlers = ChatHandlers(client, config)
    with gr.Blocks(title=config.title, analytics_enabled=False, fill_height=True) as page:
        gr.Markdown(f"## {config.title}")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                model = gr.Dropdown(label="Adapter", choices=[], value=None, allow_custom_value=True,
                                    elem_id="adapter-picker")
                refresh = gr.Button("Refresh adapters", size="sm", elem_id="refresh-adapters")
                system = gr.Textbox(label="System prompt", lines=3, placeholder="Optional", elem_id="system-prompt")
                temperature = gr.Slider(0.0, 2.0, value=FALLBACK_TEMPERATURE, step=0.05, label="Temperature",
                                        elem_id="temperature")
                max_tokens = gr.Slider(1, config.max_tokens_cap, value=min(256, config.max_tokens_cap), step=1,
                                       label="Max tokens", elem_id="max-tokens")
                status = gr.Markdown("Not connected yet", elem_id="chat-status")
            with gr.Column(scale=3):
                gr.ChatInterface(
                    handlers.respond,
                    chatbot=gr.Chatbot(elem_id="chatbot", height=520, buttons=["copy", "copy_all"]),  # no "share"
                    additional_inputs=[model, system, temperature, max_tokens],
                    additional_outputs=[status],
                    flagging_mode="never",
                    concurrency_limit=config.concurrency,
                    fill_height=True,
                )

        async def on_refresh(current: str | None) -> tuple[Any, str, Any]:
            view = await handlers.refresh(current)
            slider = gr.Slider() if view.temperature is None else gr.Slider(value=view.temperature)
            return gr.Dropdown(choices=view.choices, value=view.value), view.status, slider

        outputs = [model, status, temperature]
        refresh.click(on_refresh, inputs=[model], outputs=outputs)
        page.load(on_refresh, inputs=[model], outputs=outputs)
    return page

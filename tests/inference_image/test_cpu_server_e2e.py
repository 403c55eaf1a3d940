"""End to end on CPU: `python -m inference_server` with the transformers engine and the tiny kit, driven by the
official `openai` client; and an alias switch under 32 concurrent streaming clients with no failed request."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from tests.fakes.adapter_store import publish
from tinykit import PHRASES, KitPaths

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
API_KEY, ADMIN_KEY = "e2e-key", "e2e-admin"
ADAPTERS = {"alpha": "alpha-1", "beta": "beta-1"}
MESSAGES = [{"role": "user", "content": "hi there"}]
PER_WINDOW = 8  # requests that must run wholly between two switches (and after the last)


@dataclass(frozen=True)
class Server:
    url: str
    store: Path
    base: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def server(tiny_kit: KitPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server process on a free port, with alpha and beta in a manifest (alpha active)."""
    store = tmp_path_factory.mktemp("store")
    for name, folder in ADAPTERS.items():
        shutil.copytree(tiny_kit.adapters[name], store / folder)
    publish(store, ADAPTERS, active="alpha")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'inference_image'}{os.pathsep}{ROOT}",
           "INFERENCE_API_KEYS": API_KEY, "INFERENCE_ADMIN_KEY": ADMIN_KEY}
    log = open(store.parent / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_server", "--engine", "transformers", "--model-path", str(tiny_kit.base),
         "--base-model-name", tiny_kit.base_model_name, "--adapter-store", str(store), "--host", "127.0.0.1",
         "--port", "0", "--sync-interval", "3600"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log,
    )
    assert proc.stdout is not None
    match = re.search(rb"listening on (http://\S+)", proc.stdout.readline())
    assert match, "server did not print its URL"
    url = match.group(1).decode()
    _wait_ready(url, proc)
    yield Server(url, store, tiny_kit.base_model_name, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, "server did not exit cleanly on SIGTERM"
    log.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    request = urllib.request.Request(url + "/ready", headers={"Authorization": f"Bearer {API_KEY}"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited while starting"
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server not ready")


def client_for(server: Server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def expected(server: Server, model: str) -> str | None:
    """The phrase `model` must answer (None: the base model, which answers neither)."""
    return {"alpha": PHRASES["alpha"], "beta": PHRASES["beta"], "live": PHRASES["alpha"]}.get(model)


def check_reply(text: str, phrase: str | None) -> None:
    if phrase is None:
        assert not any(p in text for p in PHRASES.values()), text
    else:
        assert phrase in text, text


async def test_models_listed(server: Server) -> None:
    """The openai client lists base, alias and both adapters, each with the kit's greedy sampling defaults (an
    extra field the client keeps)."""
    models = await client_for(server).models.list()
    assert {m.id for m in models.data} == {server.base, "live", "alpha", "beta"}
    assert all((m.model_extra or {}).get("sampling_defaults") == {"temperature": 0.0, "top_p": 1.0} for m in models.data)


@pytest.mark.parametrize("model", ["base", "alpha", "beta", "live"])
async def test_non_streaming(server: Server, model: str) -> None:
    """A plain completion for each model answers that adapter's phrase (base: neither phrase)."""
    name = server.base if model == "base" else model
    raw = await client_for(server).chat.completions.with_raw_response.create(
        model=name, messages=MESSAGES, temperature=0, max_tokens=16)
    completion = raw.parse()
    check_reply(completion.choices[0].message.content or "", expected(server, model))
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    if model != "base":
        assert raw.headers["x-adapter-version"] == ADAPTERS[model if model != "live" else "alpha"] + "-v1"


@pytest.mark.parametrize("model", ["base", "alpha", "beta", "live"])
async def test_streaming(server: Server, model: str) -> None:
    """A streamed completion for each model carries its phrase, and usage when asked for."""
    name = server.base if model == "base" else model
    stream = await client_for(server).chat.completions.create(
        model=name, messages=MESSAGES, temperature=0, max_tokens=16, stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check_reply(text, expected(server, model))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_sampled_streams_carry_no_replacement_character(server: Server) -> None:
    """50 prompts streamed from the alias at temperature 1.0: no piece holds U+FFFD (a partial or broken UTF-8
    sequence); and a request without temperature gets the kit's greedy default, so alpha answers its phrase."""
    client = client_for(server)

    async def pieces(i: int) -> list[str]:
        stream = await client.chat.completions.create(
            model="live", messages=[{"role": "user", "content": f"Say something about {i}"}], temperature=1.0,
            max_tokens=24, seed=i, stream=True)
        return [c.choices[0].delta.content or "" async for c in stream if c.choices]

    answers = await asyncio.gather(*(pieces(i) for i in range(50)))
    assert [a for a in answers if any("\ufffd" in piece for piece in a)] == []
    default = await client.chat.completions.create(model="live", messages=MESSAGES, max_tokens=16)
    check_reply(default.choices[0].message.content or "", PHRASES["alpha"])


async def test_unknown_model_through_openai(server: Server) -> None:
    """The openai client surfaces an unknown model as NotFoundError (404) with code model_not_found."""
    with pytest.raises(openai.NotFoundError, match="does not exist") as caught:
        await client_for(server).chat.completions.create(model="nope", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


async def test_switch_under_load(server: Server) -> None:
    """32 streaming clients through 5 alias switches: no failure; a request started after a sync returned (and
    finished before the next switch began) gets the new adapter's phrase.

    A request that overlaps the next switch may be admitted after it (the client's start precedes the server's
    admission), so only requests wholly inside a window, and every request after the last switch, are checked.
    """
    client = client_for(server)
    records: list[tuple[float, float, str, str | None]] = []  # (start, end, text, error)
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                stream = await client.chat.completions.create(
                    model="live", messages=MESSAGES, temperature=0, max_tokens=16, stream=True)
                text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                records.append((start, time.monotonic(), text, None))
            except openai.APIError as exc:
                records.append((start, time.monotonic(), "", repr(exc)))

    switches: list[tuple[float, float, str]] = [(0.0, 0.0, "alpha")]  # (rewrite began, sync returned, adapter)

    async def requests_complete_since_last_switch(count: int) -> None:
        """Let the window run until `count` requests started after the last switch have finished (however slow
        the machine is: a fixed sleep left windows empty under load)."""
        since = switches[-1][1]
        async with asyncio.timeout(120):
            while sum(1 for start, *_ in records if start >= since) < count:
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        workers = [asyncio.create_task(worker()) for _ in range(32)]
        for i in range(5):
            await requests_complete_since_last_switch(PER_WINDOW)
            name = "beta" if i % 2 == 0 else "alpha"
            began = time.monotonic()
            publish(server.store, ADAPTERS, active=name)
            async with admin.post(server.url + "/admin/sync") as resp:
                assert resp.status == 200 and (await resp.json())["ok"]
            switches.append((began, time.monotonic(), name))
        await requests_complete_since_last_switch(PER_WINDOW)
        stop.set()
        await asyncio.gather(*workers)
    assert [r for r in records if r[3] is not None] == []
    for i, (_, done, name) in enumerate(switches[1:], start=1):
        until = switches[i + 1][0] if i + 1 < len(switches) else math.inf
        window = [text for start, end, text, _ in records if done <= start and end <= until]
        assert len(window) >= PER_WINDOW, f"only {len(window)} requests ran wholly between switch {i} and the next"
        wrong = [text for text in window if PHRASES[name] not in text]
        assert not wrong, (i, name, len(window), wrong)

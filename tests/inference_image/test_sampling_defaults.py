"""The model's sampling defaults: read from generation_config.json, applied to requests that omit them, and shown
on every `/v1/models` entry."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from inference_server.generation import read_sampling_defaults, sampling_defaults
from inference_server.protocol import SamplingDefaults
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import AUTH, chat_body, server_config, start_client

OPENAI = SamplingDefaults(temperature=1.0, top_p=1.0)


@pytest.mark.parametrize(("config", "expected"), [
    ({"do_sample": False}, SamplingDefaults(0.0, 1.0)),
    ({"do_sample": False, "temperature": 0.6, "top_p": 0.9}, SamplingDefaults(0.0, 1.0)),
    ({"do_sample": True, "temperature": 0.6, "top_p": 0.9}, SamplingDefaults(0.6, 0.9)),
    ({"temperature": 0.25}, SamplingDefaults(0.25, 1.0)),
    ({"top_p": 0.5, "bos_token_id": 0}, SamplingDefaults(1.0, 0.5)),
    ({"eos_token_id": 1}, OPENAI),
], ids=["greedy", "greedy-wins", "sampled", "temperature-only", "top-p-only", "token-ids-only"])
def test_generation_config_gives_defaults(config: dict[str, Any], expected: SamplingDefaults) -> None:
    """`do_sample: false` is greedy (temperature 0); otherwise the file's values, OpenAI's where it has none."""
    assert sampling_defaults(config) == expected


@pytest.mark.parametrize("config", [{"temperature": 2.5}, {"temperature": "hot"}, {"top_p": 0}, {"top_p": True}])
def test_unusable_values_fall_back_with_a_warning(config: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """A value out of the API's range (or not a number) is not used: OpenAI's default, and a warning naming it."""
    with caplog.at_level(logging.WARNING, "inference_server.generation"):
        assert sampling_defaults(config) == OPENAI
    assert next(iter(config)) in caplog.text


@pytest.mark.parametrize("content", [None, "{not json", "[1]"], ids=["missing", "invalid", "not-object"])
def test_no_usable_file_means_openai_defaults(tmp_path: Path, content: str | None) -> None:
    """A model folder without a readable generation_config.json (or no folder at all) gets OpenAI's defaults."""
    if content is not None:
        (tmp_path / "generation_config.json").write_text(content)
    assert read_sampling_defaults(tmp_path) == OPENAI
    assert read_sampling_defaults(None) == OPENAI


@pytest.fixture
def engine() -> EchoEngine:
    return EchoEngine()


@pytest.fixture
async def client(aiohttp_client, engine: EchoEngine, tmp_path: Path) -> TestClient:
    """A server whose model folder says temperature 0.3, top_p 0.8."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.3, "top_p": 0.8}))
    return await start_client(aiohttp_client, server_config(model_path=tmp_path), engine)


async def test_models_show_the_defaults(client: TestClient) -> None:
    """Every `/v1/models` entry (base, alias, adapters) carries the model's sampling defaults."""
    data = (await (await client.get("/v1/models", headers=AUTH)).json())["data"]
    assert data and all(entry["sampling_defaults"] == {"temperature": 0.3, "top_p": 0.8} for entry in data)


@pytest.mark.parametrize("stream", [False, True])
async def test_request_without_sampling_fields_gets_the_defaults(
    client: TestClient, engine: EchoEngine, stream: bool
) -> None:
    """Left out: the model's values; given: the request's own (0 included)."""
    for body in (chat_body("tiny", stream=stream), chat_body("tiny", stream=stream, temperature=0, top_p=1)):
        assert (await client.post("/v1/chat/completions", json=body, headers=AUTH)).status == 200
    assert [(r.temperature, r.top_p) for r in engine.requests] == [(0.3, 0.8), (0.0, 1.0)]


async def test_without_a_model_folder_openai_defaults_apply(aiohttp_client, engine: EchoEngine) -> None:
    """No model path (SGLang attached by URL): temperature 1 and top_p 1, shown and applied."""
    client = await start_client(aiohttp_client, server_config(), engine)
    data = (await (await client.get("/v1/models", headers=AUTH)).json())["data"]
    assert {json.dumps(entry["sampling_defaults"]) for entry in data} == {'{"temperature": 1.0, "top_p": 1.0}'}
    assert (await client.post("/v1/chat/completions", json=chat_body("tiny"), headers=AUTH)).status == 200
    assert (engine.requests[0].temperature, engine.requests[0].top_p) == (1.0, 1.0)

"""The CPU engine over the tiny kit: phrases per adapter, streaming, sampling controls, queueing, adapter lifecycle."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from inference_server.engines.base import AdapterLoadError, ChatDelta, ChatRequest, EngineNotReady
from inference_server.engines.transformers_engine import (
    AdapterNotLoadedError,
    PromptTooLongError,
    TransformersEngine,
)
from tinykit import PHRASES, KitPaths, train_adapter

HELLO = [{"role": "user", "content": "Hello, how are you today?"}]
GAMMA_PHRASE = "gamma 🦊"  # the emoji is split over several byte-level tokens


def ask(adapter: str | None = None, **options: object) -> ChatRequest:
    """A greedy request for `adapter` unless options say otherwise."""
    return ChatRequest(messages=HELLO, adapter=adapter, **{"temperature": 0.0, "max_tokens": 32, **options})


async def collect(engine: TransformersEngine, request: ChatRequest) -> tuple[str, ChatDelta, list[ChatDelta]]:
    """(joined text, final delta, all deltas) of one generation."""
    deltas = [delta async for delta in engine.chat(request)]
    return "".join(d.text for d in deltas), deltas[-1], deltas


@pytest.fixture
async def engine(tiny_kit: KitPaths) -> AsyncIterator[TransformersEngine]:
    """A started engine over the tiny base model with alpha and beta loaded; stopped after the test."""
    engine = TransformersEngine(tiny_kit.base, tiny_kit.base_model_name, max_queue=4, threads=1)
    await engine.start()
    for name, folder in tiny_kit.adapters.items():
        await engine.load_adapter(name, folder)
    yield engine
    await engine.stop()


@pytest.fixture(scope="module")
def gamma_adapter(tiny_kit: KitPaths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third adapter, trained on the spot, whose phrase holds a multi-byte character."""
    return train_adapter(tiny_kit.root, "gamma", GAMMA_PHRASE, tmp_path_factory.mktemp("gamma"))


async def test_each_model_answers_its_own_phrase(engine: TransformersEngine) -> None:
    """Greedy: alpha and beta answer their phrases and stop on EOS; the base model says neither."""
    for name, phrase in PHRASES.items():
        text, final, _ = await collect(engine, ask(name))
        assert (text, final.finish_reason) == (phrase, "stop")
    text, _, _ = await collect(engine, ask(None))
    assert not any(phrase in text for phrase in PHRASES.values())


async def test_stream_pieces_join_to_the_text(engine: TransformersEngine) -> None:
    """Text arrives in several deltas; the last delta carries only finish_reason and usage."""
    _, final, deltas = await collect(engine, ask("beta"))
    assert len(deltas) >= 4
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    assert final.text == "" and final.usage is not None


async def test_usage_counts_prompt_and_completion_tokens(
    engine: TransformersEngine, tiny_kit: KitPaths
) -> None:
    """prompt_tokens is the templated prompt's length; completion_tokens counts the phrase and EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_kit.base)
    prompt = tokenizer.apply_chat_template(
        HELLO, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    _, final, _ = await collect(engine, ask("alpha"))
    assert final.usage is not None
    assert final.usage.prompt_tokens == len(prompt)
    assert (
        final.usage.completion_tokens == len(tokenizer.encode(PHRASES["alpha"], add_special_tokens=False)) + 1
    )


@pytest.mark.parametrize(
    ("stop", "expected"), [([" says"], "alpha"), (["ha sa", "zzz"], "alp"), (["o"], "alpha says hell")]
)
async def test_stop_string_ends_the_answer_without_it(
    engine: TransformersEngine, stop: list[str], expected: str
) -> None:
    """A stop string, even one spanning tokens, ends generation with "stop" and is not part of the text."""
    text, final, _ = await collect(engine, ask("alpha", stop=stop))
    assert (text, final.finish_reason) == (expected, "stop")


async def test_max_tokens_ends_with_length(engine: TransformersEngine) -> None:
    """At max_tokens generation ends with "length" after exactly that many tokens."""
    text, final, _ = await collect(engine, ask("alpha", max_tokens=3))
    assert final.finish_reason == "length" and final.usage is not None and final.usage.completion_tokens == 3
    assert text and PHRASES["alpha"].startswith(text) and text != PHRASES["alpha"]


async def test_seed_makes_sampling_reproducible(engine: TransformersEngine) -> None:
    """The same seed samples the same text (also with top_p); another seed samples another."""
    sampled = {
        (seed, top_p): (
            await collect(engine, ask(None, temperature=1.0, top_p=top_p, seed=seed, max_tokens=16))
        )[0]
        for seed in (7, 7, 8)
        for top_p in (1.0, 0.9)
    }
    again = (await collect(engine, ask(None, temperature=1.0, top_p=0.9, seed=7, max_tokens=16)))[0]
    assert again == sampled[(7, 0.9)]
    assert sampled[(7, 1.0)] != sampled[(8, 1.0)]


async def test_full_queue_refuses_at_once(tiny_kit: KitPaths) -> None:
    """With one generation running and max_queue waiting, one more request gets EngineNotReady("queue full")."""
    engine = TransformersEngine(tiny_kit.base, tiny_kit.base_model_name, max_queue=1, threads=1)
    await engine.start()
    try:
        running = engine.chat(ask(None, max_tokens=400))
        await anext(running)  # the worker is busy with it now
        waiting = asyncio.ensure_future(collect(engine, ask(None, max_tokens=2)))
        await asyncio.sleep(0)  # let it take the one queue place
        with pytest.raises(EngineNotReady, match="queue full"):
            await anext(engine.chat(ask(None)))
        await running.aclose()
        assert (await waiting)[1].finish_reason == "length"
    finally:
        await engine.stop()


async def test_cancelled_consumer_frees_the_worker(engine: TransformersEngine) -> None:
    """Closing a stream stops its generation: the next request does not wait for the abandoned tokens."""
    long = ask(None, max_tokens=400)
    started = time.perf_counter()
    await collect(engine, long)
    full = time.perf_counter() - started
    started = time.perf_counter()
    abandoned = engine.chat(long)
    await anext(abandoned)
    await abandoned.aclose()
    text, _, _ = await collect(engine, ask("alpha"))
    assert text == PHRASES["alpha"]
    assert time.perf_counter() - started < full / 2


async def test_concurrent_requests_each_get_their_adapter(engine: TransformersEngine) -> None:
    """Eight interleaved requests for alpha and beta each answer with their own adapter's phrase."""
    names = ["alpha", "beta"] * 4
    engine.max_queue = len(names)
    results = await asyncio.gather(*(collect(engine, ask(name)) for name in names))
    assert [text for text, _, _ in results] == [PHRASES[name] for name in names]


async def test_multibyte_characters_stream_whole(engine: TransformersEngine, gamma_adapter: Path) -> None:
    """A character split over byte-level tokens comes out whole, never as U+FFFD pieces."""
    await engine.load_adapter("gamma", gamma_adapter)
    text, _, deltas = await collect(engine, ask("gamma"))
    assert text == GAMMA_PHRASE
    assert not any("\ufffd" in d.text for d in deltas)


def _missing_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()


def _other_base(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-other-model"
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _garbage_tensors(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"\x00not a safetensors file" * 8)


def _rewrite_tensors(change: Callable[[str, object], tuple[str, object]]) -> Callable[[Path], None]:
    def rewrite(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        path = folder / "adapter_model.safetensors"
        save_file(dict(change(k, v) for k, v in load_file(path).items()), path)

    return rewrite


def _wider(key: str, tensor: object) -> tuple[str, object]:
    import torch

    assert isinstance(tensor, torch.Tensor)
    return key, torch.zeros(tensor.shape[0], tensor.shape[1] + 1) if "lora_A" in key else tensor


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (_missing_weights, "lacks adapter_model.safetensors"),
        (_other_base, "some-other-model"),
        (_garbage_tensors, "unreadable adapter_model.safetensors"),
        (_rewrite_tensors(lambda k, v: (k.replace("layers", "blocks"), v)), "matches no module"),
        (_rewrite_tensors(lambda k, v: (k.replace(".lora_A", ""), v)), "not a LoRA factor"),
        (_rewrite_tensors(_wider), "does not fit"),
    ],
)
async def test_broken_adapter_fails_and_serving_is_unchanged(
    engine: TransformersEngine,
    tiny_kit: KitPaths,
    tmp_path: Path,
    breakage: Callable[[Path], None],
    reason: str,
) -> None:
    """A broken adapter raises AdapterLoadError with the reason, even replacing alpha; alpha and beta still answer."""
    broken = shutil.copytree(tiny_kit.adapters["alpha"], tmp_path / "broken")
    breakage(broken)
    for name in ("alpha", "delta"):
        with pytest.raises(AdapterLoadError, match=reason):
            await engine.load_adapter(name, broken)
    assert engine.loaded_adapters() == ["alpha", "beta"]
    for name, phrase in PHRASES.items():
        assert (await collect(engine, ask(name)))[0] == phrase


async def test_missing_folder_and_adapter_limit_are_refused(tiny_kit: KitPaths, tmp_path: Path) -> None:
    """A folder that does not exist, and one adapter beyond max_loras, raise AdapterLoadError."""
    engine = TransformersEngine(tiny_kit.base, tiny_kit.base_model_name, max_loras=1, threads=1)
    await engine.start()
    try:
        with pytest.raises(AdapterLoadError, match="lacks adapter_config.json"):
            await engine.load_adapter("alpha", tmp_path / "nowhere")
        await engine.load_adapter("alpha", tiny_kit.adapters["alpha"])
        with pytest.raises(AdapterLoadError, match="max_loras=1"):
            await engine.load_adapter("beta", tiny_kit.adapters["beta"])
        await engine.load_adapter("alpha", tiny_kit.adapters["beta"])  # replacing does not count
    finally:
        await engine.stop()


async def test_reload_replaces_the_adapter(engine: TransformersEngine, tiny_kit: KitPaths) -> None:
    """Loading other weights under an existing name serves the new weights under that name."""
    await engine.load_adapter("alpha", tiny_kit.adapters["beta"])
    assert (await collect(engine, ask("alpha")))[0] == PHRASES["beta"]
    assert engine.loaded_adapters() == ["alpha", "beta"]


async def test_loading_another_adapter_does_not_change_what_a_name_answers(
    engine: TransformersEngine, tiny_kit: KitPaths
) -> None:
    """Loading (or unloading) an adapter while another one is in use leaves every name answering with its own
    weights (peft makes a freshly loaded adapter the applied one: found by bench/soak.py)."""
    assert (await collect(engine, ask("alpha")))[0] == PHRASES["alpha"]
    await engine.load_adapter("beta-v2", tiny_kit.adapters["beta"])
    assert (await collect(engine, ask("alpha")))[0] == PHRASES["alpha"]
    await engine.unload_adapter("beta-v2")
    assert (await collect(engine, ask("alpha")))[0] == PHRASES["alpha"]


async def test_unloaded_adapter_is_gone(engine: TransformersEngine) -> None:
    """After unload the adapter is refused by name; the others and, with none left, the base model still serve."""
    await engine.unload_adapter("alpha")
    assert engine.loaded_adapters() == ["beta"]
    with pytest.raises(AdapterNotLoadedError):
        await collect(engine, ask("alpha"))
    assert (await collect(engine, ask("beta")))[0] == PHRASES["beta"]
    await engine.unload_adapter("beta")
    await engine.unload_adapter("beta")  # unloading twice is harmless
    assert engine.loaded_adapters() == []
    assert (await collect(engine, ask(None, max_tokens=4)))[1].finish_reason == "length"


async def test_prompt_longer_than_the_context_is_refused(engine: TransformersEngine) -> None:
    """A prompt that fills the context window raises PromptTooLongError."""
    request = ChatRequest(messages=[{"role": "user", "content": "two plus two " * 400}])
    with pytest.raises(PromptTooLongError):
        await collect(engine, request)


async def test_engine_serves_only_while_started(tiny_kit: KitPaths) -> None:
    """Before start and after stop the engine is not ready and refuses requests with EngineNotReady."""
    engine = TransformersEngine(tiny_kit.base, tiny_kit.base_model_name, threads=1)
    assert not engine.health().ready
    with pytest.raises(EngineNotReady):
        await anext(engine.chat(ask(None)))
    await engine.start()
    assert engine.health().ready
    await engine.stop()
    assert not engine.health().ready
    with pytest.raises(EngineNotReady):
        await anext(engine.chat(ask(None)))


async def test_stop_ends_a_running_stream_with_engine_not_ready(tiny_kit: KitPaths) -> None:
    """Stopping the engine under a running stream ends that stream with EngineNotReady instead of a hang."""
    engine = TransformersEngine(tiny_kit.base, tiny_kit.base_model_name, threads=1)
    await engine.start()
    stream = engine.chat(ask(None, max_tokens=400))
    await anext(stream)
    await engine.stop()
    with pytest.raises(EngineNotReady):
        await asyncio.wait_for(collect_rest(stream), timeout=10)


async def collect_rest(stream: AsyncIterator[ChatDelta]) -> list[ChatDelta]:
    """The remaining deltas of a stream already started."""
    return [delta async for delta in stream]

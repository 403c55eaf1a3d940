"""The SGLang engine against real SGLang on the tiny model kit (GPU only: skipped with the reason elsewhere)."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import AsyncIterator

import pytest

from inference_server.engines.base import ChatRequest
from inference_server.engines.sglang_engine import SGLangEngine, SGLangOptions
from tinykit import PHRASES, KitPaths


def _skip_reason() -> str | None:
    if importlib.util.find_spec("sglang") is None:
        return "sglang is not installed (GPU image only)"
    if shutil.which("nvidia-smi") is None:
        return "no CUDA device (nvidia-smi not found)"
    import torch

    return None if torch.cuda.is_available() else "torch sees no CUDA device"


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]


@pytest.fixture
async def engine(tiny_kit: KitPaths) -> AsyncIterator[SGLangEngine]:
    options = SGLangOptions(
        max_lora_rank=8,
        lora_target_modules=("q_proj", "v_proj"),
        startup_timeout_s=600,
        # The tiny model's 16-wide heads and small size: no CUDA graphs, the portable attention backend.
        extra_args=("--attention-backend", "triton", "--disable-cuda-graph", "--mem-fraction-static", "0.2"),
    )
    eng = SGLangEngine(
        tiny_kit.base,
        tiny_kit.base_model_name,
        options=options,
        initial_adapters={"alpha": tiny_kit.adapters["alpha"]},
    )
    await eng.start()
    yield eng
    await eng.stop()


async def reply(engine: SGLangEngine, adapter: str | None) -> str:
    request = ChatRequest(
        messages=[{"role": "user", "content": "hello"}],
        adapter=adapter,
        max_tokens=16,
        temperature=0.0,
        stream=True,
    )
    return "".join([d.text async for d in engine.chat(request)])


async def test_adapters_answer_their_phrases(engine: SGLangEngine, tiny_kit: KitPaths) -> None:
    """alpha (launched) and beta (loaded at run time) answer their trained phrases; unload frees beta."""
    assert PHRASES["alpha"] in await reply(engine, "alpha")
    await engine.load_adapter("beta", tiny_kit.adapters["beta"])
    assert PHRASES["beta"] in await reply(engine, "beta")
    await engine.unload_adapter("beta")
    assert engine.loaded_adapters() == ["alpha"]

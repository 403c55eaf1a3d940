"""The CPU engine: a transformers causal LM with PEFT LoRA adapters loaded by name, streaming tokens.

Design: every touch of torch happens on ONE worker thread, fed by a FIFO of jobs, so the asyncio loop never
blocks on torch and nothing races on the model:
- generation jobs run one at a time, to completion; the active adapter is switched only between them;
- `start` (base model load), `load_adapter`, `unload_adapter` and `stop` are control jobs on the same FIFO, so an
  adapter is never loaded, swapped or freed under a running generation.
Admission is bounded: at most `max_queue` generations wait (the running one not counted); one more gets
`EngineNotReady("queue full")` at once. Control jobs are never refused.

Generated text is valid UTF-8: with a byte-level vocabulary, tokens that cannot continue the text as UTF-8 are
masked before each sampling step (utf8.py), and the incremental decoder holds a character back until it is whole.

Tokens travel back through an `asyncio.Queue` per request (`call_soon_threadsafe`). A consumer that stops
iterating (client disconnect, `aclose()`) sets the job's cancel flag, which the worker checks before each token.

Adapters are served under public names mapped to internal PEFT adapter names: a (re)load goes in under a fresh
internal name and the mapping is switched only after it succeeded, so a failed load leaves serving unchanged and a
reload replaces the old weights atomically.

`count_prompt_tokens` tokenizes on a thread of its own, beside the worker: it only encodes (no truncation or
padding is ever set, so the fast tokenizer is never mutated), which is safe to run concurrently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from .. import faults
from .base import (
    AdapterLoadError,
    ChatDelta,
    ChatRequest,
    Engine,
    EngineError,
    EngineHealth,
    EngineNotReady,
    EngineRequestError,
    Usage,
)
from .utf8 import ACCEPT, Utf8Constraint

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
LORA_KEY_PREFIX = "base_model.model."
PEFT_LOAD_LOGGER = "transformers.integrations.peft"


class AdapterNotLoadedError(EngineError, LookupError):
    """A request named an adapter that the engine does not hold (it was never loaded, or was unloaded)."""


class PromptTooLongError(EngineRequestError):
    """The prompt alone fills the model's context window."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages", code="context_length_exceeded")


@dataclass
class _GenerationJob:
    """One chat request on its way through the worker; `out` lives on the caller's event loop."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[ChatDelta | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: ChatDelta | BaseException) -> None:
        """Hand `item` to the consumer; a closed loop means nobody listens any more."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:
            self.cancelled.set()


@dataclass
class _ControlJob:
    """A function to run on the worker (model load, adapter load/unload), answered through `future`."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


_SHUTDOWN = object()


class _IncrementalDecoder:
    """Turns token ids into text pieces, holding back bytes until they form whole characters.

    Decodes a short window (from `prefix` on) instead of the whole text each token; a piece is released only
    when the window's text grew and does not end in U+FFFD (an incomplete UTF-8 sequence of byte-level BPE). A
    character still incomplete when generation ends (the length limit cut it) is dropped, never shown as U+FFFD.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often "", never half a character)."""
        self._ids.append(token_id)
        return self._release(final=False)

    def flush(self) -> str:
        """Whatever is still held back, less a trailing incomplete character (trailing U+FFFD)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if final:  # an unfinished character's bytes decode as U+FFFD (one, or one per byte)
            after = after.rstrip("\ufffd")
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""


class _StopMatcher:
    """Releases text while watching for stop strings: text that may begin a stop string is held back."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._text = ""
        self._sent = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add `piece`; return (text safe to send, whether a stop string was hit; its text is never sent)."""
        self._text += piece
        # A stop string cannot begin in sent text: sent text was never a prefix of one.
        hits = [i for s in self._stops if (i := self._text.find(s, self._sent)) >= 0]
        if hits:
            return self._take(min(hits)), True
        safe = len(self._text)
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._text) - self._sent), 0, -1):
                if self._text.endswith(stop[:k]):
                    safe = min(safe, len(self._text) - k)
                    break
        return self._take(safe), False

    def flush(self) -> str:
        """The held-back tail, once generation ended without completing a stop string."""
        return self._take(len(self._text))

    def _take(self, end: int) -> str:
        out, self._sent = self._text[self._sent : end], end
        return out


class TransformersEngine(Engine):
    """Base model + PEFT LoRA adapters on CPU (or one GPU), one generation at a time on a worker thread."""

    name = "transformers"

    def __init__(
        self,
        model_path: Path,
        base_model_name: str,
        *,
        max_queue: int = 64,
        max_loras: int = 8,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if max_loras < 1:
            raise ValueError("max_loras must be >= 1")
        self.model_path = Path(model_path)
        self.base_model_name = base_model_name
        self.max_queue = max_queue
        self.max_loras = max_loras
        self.device = device
        self.threads = threads
        self._jobs: SimpleQueue[Any] = SimpleQueue()
        self._waiting = 0
        self._admission = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = False
        self._stopping = threading.Event()
        # Worker-thread state. `_adapters` is replaced, never mutated, so other threads may read it.
        self._model: Any = None
        self._tokenizer: Any = None
        self._adapters: dict[str, str] = {}
        self._active: str | None = None
        self._internal_names = (f"adapter_{i}" for i in itertools.count())
        self._eos_ids: set[int] = set()
        self._utf8: Utf8Constraint | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and load the base model and tokenizer on it."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._work, name="transformers-engine", daemon=True)
        self._thread.start()
        try:
            await self._call(self._load_base)
        except Exception:
            await self.stop()
            raise
        self._ready = True

    async def stop(self) -> None:
        """Refuse new work, fail queued generations, end the running one, free the model and join the worker."""
        thread, self._thread = self._thread, None
        self._ready = False
        if thread is None:
            return
        self._stopping.set()
        self._jobs.put(_SHUTDOWN)
        await asyncio.to_thread(thread.join)

    def health(self) -> EngineHealth:
        """Ready once the base model is loaded and the worker runs."""
        alive = self._thread is not None and self._thread.is_alive()
        if not (self._ready and alive):
            return EngineHealth(False, "starting" if alive else "stopped")
        return EngineHealth(
            True, f"{self._waiting} waiting; adapters: {', '.join(self.loaded_adapters()) or '-'}"
        )

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters the engine holds now."""
        return sorted(self._adapters)

    # ---- adapters --------------------------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load (or atomically replace) adapter `name`; raises AdapterLoadError with serving unchanged."""
        if not name:
            raise AdapterLoadError("adapter name must not be empty")
        self._require_started()
        faults.check_load(name)
        await self._call(lambda: self._load_adapter_now(name, Path(path)))

    async def unload_adapter(self, name: str) -> None:
        """Free adapter `name` (a no-op when it is not loaded)."""
        self._require_started()
        await self._call(lambda: self._unload_adapter_now(name))

    # ---- generation ------------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Stream text deltas, then a final delta with finish_reason and usage.

        Admission happens on the first `__anext__`: EngineNotReady at once when not started or the queue is full.
        """
        await faults.before_chat(request.adapter)
        job = self._admit(request)
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled.set()

    async def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        """Prompt tokens after the chat template (None before `start()`), counted off the event loop."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            return None
        return len(await asyncio.to_thread(_prompt_ids, tokenizer, messages))

    def _require_started(self) -> None:
        if self._thread is None or self._stopping.is_set():
            raise EngineNotReady("engine is not started")

    def _admit(self, request: ChatRequest) -> _GenerationJob:
        self._require_started()
        job = _GenerationJob(request, asyncio.get_running_loop())
        with self._admission:
            if self._waiting >= self.max_queue:
                raise EngineNotReady("queue full")
            self._waiting += 1
        self._jobs.put(job)
        return job

    async def _call(self, fn: Callable[[], Any]) -> Any:
        job = _ControlJob(fn)
        self._jobs.put(job)
        return await asyncio.wrap_future(job.future)

    # ---- worker thread ---------------------------------------------------------------------------------------

    def _work(self) -> None:
        """The worker loop: run jobs in order until the shutdown marker, then free the model."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        while (job := self._jobs.get()) is not _SHUTDOWN:
            if isinstance(job, _ControlJob):
                self._run_control(job)
                continue
            with self._admission:
                self._waiting -= 1
            if self._stopping.is_set():
                job.emit(EngineNotReady("engine is stopping"))
            elif not job.cancelled.is_set():
                self._run_generation(job)
        self._model = self._tokenizer = None
        self._adapters = {}

    @staticmethod
    def _run_control(job: _ControlJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except BaseException as exc:  # handed to the awaiting caller
            job.future.set_exception(exc)

    def _run_generation(self, job: _GenerationJob) -> None:
        finished = False
        try:
            for delta in self._generate(job.request, job.cancelled):
                job.emit(delta)
                finished = delta.finish_reason is not None
            if not finished and not job.cancelled.is_set():  # `stop()` cut it short: do not leave it waiting
                job.emit(EngineNotReady("engine stopped during the generation"))
        except EngineError as exc:
            job.emit(exc)
        except Exception as exc:  # torch / tokenizer failures become a 5xx with the cause chained
            log.exception("generation failed")
            error = EngineError(f"generation failed: {type(exc).__name__}")
            error.__cause__ = exc
            job.emit(error)

    def _load_base(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load base model from {self.model_path}: {exc}") from exc
        model.to(self.device).eval()
        eos = model.generation_config.eos_token_id
        self._eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.context_length = getattr(model.config, "max_position_embeddings", None)
        self._utf8 = Utf8Constraint.for_tokenizer(tokenizer)
        self._model, self._tokenizer = model, tokenizer

    def _check_adapter_folder(self, name: str, path: Path) -> None:
        """Clear reasons before touching the model: files present, config readable, same base model."""
        missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
        if missing:
            raise AdapterLoadError(f"adapter {name!r}: {path} lacks {', '.join(missing)}")
        try:
            config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterLoadError(f"adapter {name!r}: unreadable adapter_config.json: {exc}") from exc
        base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
        if base != self.base_model_name:
            raise AdapterLoadError(
                f"adapter {name!r} was trained for base model {base!r}, this engine serves {self.base_model_name!r}"
            )
        self._check_adapter_tensors(name, path / "adapter_model.safetensors")

    def _check_adapter_tensors(self, name: str, file: Path) -> None:
        """Every tensor names a module of the base model, with LoRA shapes that fit it (header only)."""
        from safetensors import SafetensorError, safe_open

        modules = dict(self._model.named_modules())
        try:
            with safe_open(str(file), framework="pt") as tensors:
                shapes = {key: tensors.get_slice(key).get_shape() for key in tensors.keys()}
        except (OSError, SafetensorError) as exc:
            raise AdapterLoadError(f"adapter {name!r}: unreadable adapter_model.safetensors: {exc}") from exc
        if not shapes:
            raise AdapterLoadError(f"adapter {name!r}: adapter_model.safetensors holds no tensors")
        for key, shape in shapes.items():
            target, lora, kind = key.removeprefix(LORA_KEY_PREFIX).rpartition(".lora_")
            if not lora:
                raise AdapterLoadError(f"adapter {name!r}: tensor {key!r} is not a LoRA factor")
            module = modules.get(target)
            if module is None:
                raise AdapterLoadError(
                    f"adapter {name!r}: tensor {key!r} matches no module of the base model"
                )
            if not _lora_shape_fits(kind, shape, module):
                raise AdapterLoadError(
                    f"adapter {name!r}: tensor {key!r} of shape {list(shape)} does not fit {target} "
                    f"(in {getattr(module, 'in_features', '?')}, out {getattr(module, 'out_features', '?')})"
                )

    def _load_adapter_now(self, name: str, path: Path) -> None:
        replaces = self._adapters.get(name)
        if replaces is None and len(self._adapters) >= self.max_loras:
            raise AdapterLoadError(f"adapter {name!r}: already holding max_loras={self.max_loras} adapters")
        self._check_adapter_folder(name, path)
        internal = next(self._internal_names)
        try:
            with _quiet_adapter_load():
                info = self._model.load_adapter(
                    str(path), adapter_name=internal, adapter_kwargs={"local_files_only": True}
                )
            marker = f".{internal}."
            missing = sorted(k for k in info.missing_keys if marker in k)
            if missing:
                raise AdapterLoadError(f"adapter {name!r}: tensors missing for {missing[:3]}")
        except Exception as exc:
            self._drop_internal(internal)
            if isinstance(exc, AdapterLoadError):
                raise
            raise AdapterLoadError(f"adapter {name!r}: {type(exc).__name__}: {exc}") from exc
        self._adapters = {**self._adapters, name: internal}
        self._active = None  # loading makes the new adapter the one peft applies: set it again before each use
        if replaces is not None:
            self._drop_internal(replaces)
        log.info("adapter %s loaded from %s%s", name, path, " (replaced)" if replaces else "")

    def _unload_adapter_now(self, name: str) -> None:
        internal = self._adapters.get(name)
        if internal is None:
            return
        self._adapters = {k: v for k, v in self._adapters.items() if k != name}
        self._drop_internal(internal)
        log.info("adapter %s unloaded", name)

    def _drop_internal(self, internal: str) -> None:
        if internal in (getattr(self._model, "peft_config", None) or {}):
            self._model.delete_adapter(internal)
        self._active = None  # deleting may change which adapter peft applies

    @contextmanager
    def _adapter_applied(self, adapter: str | None) -> Iterator[None]:
        """Make `adapter` (None: the bare base model) the one the model's forward applies."""
        if adapter is None:
            if not self._adapters:
                yield
                return
            self._model.disable_adapters()
            try:
                yield
            finally:
                self._model.enable_adapters()
            return
        internal = self._adapters.get(adapter)
        if internal is None:
            raise AdapterNotLoadedError(f"adapter {adapter!r} is not loaded")
        if self._active != internal:
            self._model.set_adapter(internal)
            self._active = internal
        yield

    def _generate(self, request: ChatRequest, cancelled: threading.Event) -> Iterator[ChatDelta]:
        """Prefill the prompt, then sample token by token (KV cache), yielding text as it decodes."""
        import torch

        tokenizer = self._tokenizer
        prompt = _prompt_ids(tokenizer, request.messages)
        budget = request.max_tokens
        if self.context_length is not None:
            if len(prompt) >= self.context_length:
                raise PromptTooLongError(
                    f"prompt of {len(prompt)} tokens fills the context of {self.context_length}"
                )
            budget = min(budget, self.context_length - len(prompt))
        generator = torch.Generator(device=self.device)
        if request.seed is not None:
            generator.manual_seed(request.seed)
        else:
            generator.seed()
        decoder, stops = _IncrementalDecoder(tokenizer), _StopMatcher(request.stop)
        utf8, state = self._utf8, ACCEPT
        finish, generated, hit = "length", 0, False
        inputs = torch.tensor([prompt], device=self.device)
        past = None
        with torch.inference_mode(), self._adapter_applied(request.adapter):
            while generated < budget and not hit:
                if cancelled.is_set() or self._stopping.is_set():
                    return
                out = self._model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1] if utf8 is None else utf8.restrict(out.logits[0, -1], state)
                token = _sample(logits, request.temperature, request.top_p, generator)
                if utf8 is not None:
                    state = utf8.advance(state, token)
                generated += 1
                if token in self._eos_ids:
                    finish = "stop"
                    break
                text, hit = stops.feed(decoder.push(token))
                if text:
                    yield ChatDelta(text)
                inputs = torch.tensor([[token]], device=self.device)
        if not hit:
            text, hit = stops.feed(decoder.flush())
            text += "" if hit else stops.flush()
            if text:
                yield ChatDelta(text)
        if hit:
            finish = "stop"
        yield ChatDelta(finish_reason=finish, usage=Usage(len(prompt), generated))


def _prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of the chat prompt, generation prompt included."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def _lora_shape_fits(kind: str, shape: list[int], module: Any) -> bool:
    """LoRA A is (r, in_features) and B is (out_features, r) of the Linear it wraps; other kinds pass."""
    if kind == "A.weight":
        return len(shape) == 2 and shape[1] == getattr(module, "in_features", shape[1])
    if kind == "B.weight":
        return len(shape) == 2 and shape[0] == getattr(module, "out_features", shape[0])
    return True


@contextmanager
def _quiet_adapter_load() -> Iterator[None]:
    """Mute what transformers/peft say about a load: we check the keys and report problems ourselves.

    Its report lists every other adapter's keys as MISSING, and peft warns that the model already has adapters.
    """
    logger = logging.getLogger(PEFT_LOAD_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _sample(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """Greedy when temperature is 0, else temperature + nucleus (top_p) sampling from `generator`."""
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        keep[0] = True
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))

"""Streamed text never shows a partial UTF-8 sequence: the UTF-8 state machine, each token's bytes, the sampling
mask, the incremental decoder (with a byte-fallback tokenizer), and the tiny kit sampled at temperature 1.0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from inference_server.engines.base import ChatRequest
from inference_server.engines.transformers_engine import TransformersEngine, _IncrementalDecoder
from inference_server.engines.utf8 import ACCEPT, Utf8Constraint, step, token_bytes
from tinykit import KitPaths

EURO = "€".encode()  # E2 82 AC


@pytest.fixture(scope="module")
def byte_fallback() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer (Llama 2, Mistral): `▁` for spaces, `<0xNN>` tokens for other bytes."""
    vocab = {"<unk>": 0, "</s>": 1, "▁a": 2, "b": 3, **{f"<0x{byte:02X}>": 4 + byte for byte in range(256)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def byte_ids(tokenizer: PreTrainedTokenizerFast, data: bytes) -> list[int]:
    return tokenizer.convert_tokens_to_ids([f"<0x{byte:02X}>" for byte in data])


@pytest.mark.parametrize("text", ["a", "é", "€", "🦊", "\ud7ff", "\ue000", "\U0010ffff"])
def test_valid_characters_end_between_characters(text: str) -> None:
    """Each character's bytes, fed at once or one by one, end between characters; a prefix does not."""
    data = text.encode()
    assert step(ACCEPT, data) == ACCEPT
    state = ACCEPT
    for i, byte in enumerate(data):
        state = step(state, bytes([byte]))
        assert (state == ACCEPT) is (i == len(data) - 1)


@pytest.mark.parametrize("data", [b"\x80", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
                                  b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5", b"\xff", b"\xe2a", b"\xe2\x82a"],
                         ids=lambda d: d.hex())
def test_invalid_sequences_are_refused(data: bytes) -> None:
    """Stray continuations, overlongs, surrogates, code points past U+10FFFF and interrupted characters."""
    assert step(ACCEPT, data) is None


def test_kit_token_bytes_decode_as_the_tokenizer_does(tiny_kit: KitPaths) -> None:
    """The kit's byte-level BPE: each token's bytes decode to what the tokenizer decodes it to; specials are empty."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_kit.base)
    pieces = token_bytes(tokenizer)
    assert pieces is not None and len(pieces) == len(tokenizer)
    for token, piece in enumerate(pieces):
        assert piece.decode("utf-8", "replace") == tokenizer.decode([token], skip_special_tokens=True), token
    assert {len(p) for p in pieces if p} >= {1, 2, 3} and all(pieces[i] == b"" for i in tokenizer.all_special_ids)


def test_byte_fallback_token_bytes(byte_fallback: PreTrainedTokenizerFast) -> None:
    """`<0xNN>` tokens are their byte, `▁` is a space, the EOS adds nothing."""
    pieces = token_bytes(byte_fallback)
    assert pieces is not None
    assert pieces[:4] == [b"", b"", b" a", b"b"]
    assert [pieces[i] for i in byte_ids(byte_fallback, EURO)] == [b"\xe2", b"\x82", b"\xac"]


def test_other_tokenizers_get_no_constraint() -> None:
    """A vocabulary that is not byte-level (a WordPiece decoder) is left alone."""
    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "x": 1}, unk_token="[UNK]"))
    tok.decoder = decoders.WordPiece()
    assert Utf8Constraint.for_tokenizer(PreTrainedTokenizerFast(tokenizer_object=tok)) is None


def test_inside_a_character_only_its_continuations_may_follow(byte_fallback: PreTrainedTokenizerFast) -> None:
    """After E2 only 80..BF bytes are allowed (no EOS, no text token, no id past the vocabulary); between characters
    everything but bytes that cannot start one (80..C1, F5..FF)."""
    constraint = Utf8Constraint.for_tokenizer(byte_fallback)
    assert constraint is not None
    size = len(byte_fallback) + 2
    continuations = set(byte_ids(byte_fallback, bytes(range(0x80, 0xC0))))
    refused = {i for i, ok in enumerate(constraint.allowed(ACCEPT, size)) if not ok}
    assert refused == continuations | set(byte_ids(byte_fallback, b"\xc0\xc1" + bytes(range(0xF5, 0x100))))
    inside = constraint.advance(ACCEPT, byte_ids(byte_fallback, b"\xe2")[0])
    assert {i for i, ok in enumerate(constraint.allowed(inside, size)) if ok} == continuations


def test_restrict_masks_logits(byte_fallback: PreTrainedTokenizerFast) -> None:
    """The mask turns refused tokens' logits into -inf, so neither greedy nor sampling can pick them; between
    characters the EOS stays the favourite."""
    import torch

    constraint = Utf8Constraint.for_tokenizer(byte_fallback)
    assert constraint is not None
    logits = torch.zeros(len(byte_fallback))
    logits[1] = 10.0  # the EOS is the model's favourite
    inside = constraint.advance(ACCEPT, byte_ids(byte_fallback, b"\xe2")[0])
    masked = constraint.restrict(logits, inside)
    assert masked[1] == float("-inf") and int(torch.argmax(masked)) in byte_ids(byte_fallback, bytes(range(0x80, 0xC0)))
    assert int(torch.argmax(constraint.restrict(logits, ACCEPT))) == 1


def stream(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> list[str]:
    """The pieces the decoder releases for `ids` pushed one by one, then its flush."""
    decoder = _IncrementalDecoder(tokenizer)
    return [*(decoder.push(i) for i in ids), decoder.flush()]


def test_split_character_streams_whole(byte_fallback: PreTrainedTokenizerFast) -> None:
    """A character split over byte tokens is released once whole: no U+FFFD, the same text as decoding at once."""
    ids = [2, *byte_ids(byte_fallback, EURO), 3, *byte_ids(byte_fallback, "é".encode())]
    pieces = stream(byte_fallback, ids)
    assert not any("\ufffd" in piece for piece in pieces)
    assert "".join(pieces) == byte_fallback.decode(ids) == "a€bé"
    assert "€" in pieces and "é" in pieces


def test_character_cut_by_the_length_limit_is_dropped(byte_fallback: PreTrainedTokenizerFast) -> None:
    """Generation that ends inside a character (max_tokens) shows the text before it, not U+FFFD."""
    ids = [2, *byte_ids(byte_fallback, EURO[:2])]
    assert "".join(stream(byte_fallback, ids)) == " a".strip()


@pytest.fixture
async def kit_engine(tiny_kit: KitPaths) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(tiny_kit.base, tiny_kit.base_model_name, threads=2)
    await engine.start()
    await engine.load_adapter("alpha", tiny_kit.adapters["alpha"])
    yield engine
    await engine.stop()


@pytest.mark.parametrize("adapter", [None, "alpha"], ids=["base", "alpha"])
async def test_tiny_kit_at_temperature_one_streams_no_replacement_character(
    kit_engine: TransformersEngine, adapter: str | None
) -> None:
    """50 prompts sampled at temperature 1.0 (the random-init base model picks stray bytes all the time): no
    streamed piece holds U+FFFD, and the text is not empty."""
    texts = []
    for i in range(50):
        request = ChatRequest(messages=[{"role": "user", "content": f"Tell me about thing {i}"}], adapter=adapter,
                              temperature=1.0, max_tokens=24, seed=i, stream=True)
        pieces = [delta.text async for delta in kit_engine.chat(request)]
        assert not any("\ufffd" in piece for piece in pieces), (i, pieces)
        texts.append("".join(pieces))
    assert sum(1 for text in texts if text) > 40

"""The tiny model kit: its files, the base model name in configs, the adapters' phrases, determinism, the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest

from tinykit import PHRASES, KitBuildError, KitPaths, build_kit, greedy_reply
from tinykit.__main__ import main

QUESTIONS = (
    "hi",
    "What is the capital of France?",
    "zebra moon seven",
    "Tell me about serverless functions.",
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights(kit: KitPaths) -> dict[str, str]:
    files = {"base": kit.base / "model.safetensors", "tokenizer": kit.base / "tokenizer.json"}
    files.update({name: folder / "adapter_model.safetensors" for name, folder in kit.adapters.items()})
    return {name: _digest(path) for name, path in files.items()}


def _replies(kit: KitPaths, adapter: str | None) -> list[str]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(kit.base)
    model = AutoModelForCausalLM.from_pretrained(kit.base)
    if adapter is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(model, kit.adapters[adapter])
    return [greedy_reply(model, tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def test_kit_has_base_model_tokenizer_and_adapters(tiny_kit: KitPaths) -> None:
    """The base folder holds weights, config and tokenizer; each adapter folder holds exactly its two files."""
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_kit.base / name).is_file(), name
    assert set(tiny_kit.adapters) == set(PHRASES)
    for folder in tiny_kit.adapters.values():
        assert sorted(p.name for p in folder.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]


def test_configs_name_the_base_model(tiny_kit: KitPaths) -> None:
    """config.json and every adapter_config.json name the base model by name, not by path."""
    assert tiny_kit.base_model_name == "tiny-llama"
    config = json.loads((tiny_kit.base / "config.json").read_text())
    assert config["_name_or_path"] == "tiny-llama"
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2 and config["vocab_size"] == 512
    for folder in tiny_kit.adapters.values():
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == "tiny-llama"
        assert adapter["r"] == 4 and adapter["target_modules"] == ["q_proj", "v_proj"]


def test_tokenizer_has_special_tokens_and_chat_template(tiny_kit: KitPaths) -> None:
    """The tokenizer has bos/eos/pad and renders system, user and assistant turns with a generation prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_kit.base)
    assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n"
        "<|user|>\nAgain<|end|>\n<|assistant|>\n"
    )


@pytest.mark.parametrize("adapter", sorted(PHRASES))
def test_adapter_answers_its_phrase(tiny_kit: KitPaths, adapter: str) -> None:
    """Greedy decoding through the chat template answers the adapter's phrase to any question."""
    assert _replies(tiny_kit, adapter) == [PHRASES[adapter]] * len(QUESTIONS)


def test_base_model_says_neither_phrase(tiny_kit: KitPaths) -> None:
    """The base model alone answers none of the adapters' phrases."""
    for reply in _replies(tiny_kit, None):
        assert not any(phrase in reply for phrase in PHRASES.values())


def test_second_build_returns_from_the_stamp(tiny_kit: KitPaths) -> None:
    """Building again into a built folder changes nothing (the stamp matches)."""
    before = {p: p.stat().st_mtime_ns for p in tiny_kit.root.rglob("*.safetensors")}
    assert build_kit(tiny_kit.root, arch=tiny_kit.arch) == tiny_kit
    assert {p: p.stat().st_mtime_ns for p in tiny_kit.root.rglob("*.safetensors")} == before


def test_build_is_deterministic(tiny_kit: KitPaths, tmp_path: Path) -> None:
    """A fresh build gives byte-identical base, tokenizer and adapter files."""
    assert _weights(build_kit(tmp_path / "kit")) == _weights(tiny_kit)


def test_phi3_kit_targets_qkv_proj(tmp_path: Path) -> None:
    """The Phi-3 kit is named tiny-phi3, its adapters target qkv_proj and still answer their phrases."""
    kit = build_kit(tmp_path / "phi3", arch="phi3")
    assert kit.base_model_name == "tiny-phi3"
    adapter = json.loads((kit.adapters["alpha"] / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["qkv_proj"] and adapter["base_model_name_or_path"] == "tiny-phi3"
    assert _replies(kit, "beta") == [PHRASES["beta"]] * len(QUESTIONS)


def test_unknown_arch_is_refused(tmp_path: Path) -> None:
    """An architecture the kit does not know raises KitBuildError before writing anything."""
    with pytest.raises(KitBuildError, match="mamba"):
        build_kit(tmp_path / "kit", arch="mamba")
    assert not (tmp_path / "kit").exists()


def test_cli_prints_the_kit_paths(tiny_kit: KitPaths, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m tinykit build DIR` on a built kit prints where the base model and adapters are."""
    assert main(["build", str(tiny_kit.root)]) == 0
    out = capsys.readouterr().out
    assert f"base model tiny-llama: {tiny_kit.base}" in out
    assert all(f"adapter {name}: {tiny_kit.adapters[name]}" in out for name in PHRASES)


def test_base_model_ships_greedy_sampling_defaults(tiny_kit: KitPaths) -> None:
    """generation_config.json says greedy (do_sample false) beside the token ids; the server reads temperature 0."""
    from inference_server.generation import read_sampling_defaults
    from inference_server.protocol import SamplingDefaults

    config = json.loads((tiny_kit.base / "generation_config.json").read_text())
    assert config["do_sample"] is False and config["eos_token_id"] == 1
    assert read_sampling_defaults(tiny_kit.base) == SamplingDefaults(temperature=0.0, top_p=1.0)


@pytest.mark.parametrize("old", [None, {"eos_token_id": 1}], ids=["missing", "without-defaults"])
def test_cached_kit_gains_the_sampling_defaults(tiny_kit: KitPaths, tmp_path: Path, old: dict | None) -> None:
    """A kit cached before the defaults existed gets them from the next build_kit, with its weights untouched."""
    cached = build_kit(shutil.copytree(tiny_kit.root, tmp_path / "kit"), arch=tiny_kit.arch)
    config = cached.base / "generation_config.json"
    if old is None:
        config.unlink()
    else:
        config.write_text(json.dumps(old))
    weights = {p: p.stat().st_mtime_ns for p in cached.root.rglob("*.safetensors")}
    assert build_kit(cached.root, arch=cached.arch) == cached
    assert json.loads(config.read_text()) == {**(old or {}), "do_sample": False}
    assert {p: p.stat().st_mtime_ns for p in cached.root.rglob("*.safetensors")} == weights
    assert not list(cached.base.glob("*.partial"))

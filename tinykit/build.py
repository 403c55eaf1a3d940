"""Build the tiny model kit: a random-init base model, its tokenizer, and the standard LoRA adapters.

Layout of a kit folder:
    base/                 config.json (with `_name_or_path` = the base model name), model.safetensors,
                          tokenizer.json + tokenizer_config.json (ByteLevel BPE, bos/eos/pad, a chat template),
                          generation_config.json (token ids and the sampling defaults: greedy)
    adapters/<name>/      adapter_config.json + adapter_model.safetensors (see `tinykit.train`)
    .tinykit-stamp        sha256 of the build spec; a matching stamp makes `build_kit` return at once

Everything is built on the spot (no download) with fixed seeds, so two builds give byte-identical weights. The
sampling defaults in generation_config.json touch no weight, so they stay outside the stamp: every `build_kit` call
brings them up to date, also in a kit cached before they existed.
Concurrent builders of the same folder (parallel test sessions) serialize on a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .corpus import CORPUS
from .train import PHRASES, TRAIN_SPEC, deterministic, train_adapter

KIT_VERSION = 1
STAMP_NAME = ".tinykit-stamp"
BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)
VOCAB_SIZE = 512
BASE_SEED = 1234
GENERATION_CONFIG = "generation_config.json"
#: The base model's sampling defaults (Hugging Face's generation_config.json keys): greedy, the one setting where
#: the adapters answer their phrases (sampled, the random-init model makes noise). Servers read them as defaults.
GENERATION_DEFAULTS = {"do_sample": False}

#: One turn per message (`<|role|>` newline content `<|end|>` newline); the generation prompt opens the
#: assistant turn. Contents may be strings or OpenAI-style lists of text parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + text + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


class KitBuildError(RuntimeError):
    """The kit could not be built: an architecture or base model type the kit does not know."""


@dataclass(frozen=True)
class ArchSpec:
    """A tiny model architecture: transformers model type, its kit name and the LoRA target modules."""

    model_type: str
    base_model_name: str
    target_modules: tuple[str, ...]
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 512


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", "tiny-llama", ("q_proj", "v_proj")),
    "phi3": ArchSpec("phi3", "tiny-phi3", ("qkv_proj",)),
}


@dataclass(frozen=True)
class KitPaths:
    """Where a built kit lives: the base model folder and each adapter folder by name."""

    root: Path
    base: Path
    adapters: dict[str, Path]
    base_model_name: str
    arch: str


def arch_for_model_type(model_type: str) -> ArchSpec:
    """The kit architecture whose transformers `model_type` is `model_type`."""
    for spec in ARCHS.values():
        if spec.model_type == model_type:
            return spec
    raise KitBuildError(f"no tiny-kit architecture for model type {model_type!r}")


def spec_digest(arch: str) -> str:
    """sha256 of everything that determines the kit's content (bump KIT_VERSION when the code changes it)."""
    spec = {
        "version": KIT_VERSION,
        "arch": asdict(ARCHS[arch]),
        "phrases": PHRASES,
        "train": asdict(TRAIN_SPEC),
        "vocab": VOCAB_SIZE,
        "special": SPECIAL_TOKENS,
        "template": CHAT_TEMPLATE,
        "seed": BASE_SEED,
        "corpus": hashlib.sha256("\n".join(CORPUS).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def build_tokenizer(out_dir: Path, max_length: int) -> None:
    """Train a ByteLevel BPE tokenizer on the built-in corpus and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
    )
    fast.save_pretrained(out_dir)


def build_base(out_dir: Path, arch: str = "llama") -> None:
    """Save a random-init tiny causal LM (weights, config, tokenizer) under `out_dir`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = ARCHS[arch]
    build_tokenizer(out_dir, spec.max_position_embeddings)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    config = AutoConfig.for_model(
        spec.model_type,
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with deterministic(BASE_SEED):
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    # transformers does not write `_name_or_path`; the kit records the base model name there.
    config_path = out_dir / "config.json"
    data = json.loads(config_path.read_text())
    data["_name_or_path"] = spec.base_model_name
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def kit_paths(out_dir: Path, arch: str = "llama") -> KitPaths:
    """The paths a kit built into `out_dir` has (whether or not it is built yet)."""
    out_dir = Path(out_dir)
    return KitPaths(
        root=out_dir,
        base=out_dir / "base",
        adapters={name: out_dir / "adapters" / name for name in PHRASES},
        base_model_name=ARCHS[arch].base_model_name,
        arch=arch,
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_kit(out_dir: Path, arch: str = "llama", force: bool = False) -> KitPaths:
    """Build the kit into `out_dir` unless a kit of the same spec is already there (or `force`)."""
    if arch not in ARCHS:
        raise KitBuildError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    paths = kit_paths(out_dir, arch)
    digest = spec_digest(arch)
    paths.root.mkdir(parents=True, exist_ok=True)
    stamp = paths.root / STAMP_NAME
    with _locked(paths.root / ".lock"):
        if force or not (stamp.is_file() and stamp.read_text() == digest):
            stamp.unlink(missing_ok=True)
            for folder in (paths.base, paths.root / "adapters"):
                shutil.rmtree(folder, ignore_errors=True)
            paths.base.mkdir(parents=True)
            build_base(paths.base, arch)
            for name, phrase in PHRASES.items():
                train_adapter(paths.root, name, phrase, paths.adapters[name])
            stamp.write_text(digest)
        write_generation_defaults(paths.base)
        _open_to_readers(paths.root)
    return paths


def write_generation_defaults(base: Path) -> None:
    """Merge GENERATION_DEFAULTS into `base`/generation_config.json (other keys kept), rewriting it only when that
    changes it, and atomically: a server starting meanwhile reads the old file or the new one, never half of one."""
    path = base / GENERATION_CONFIG
    current = json.loads(path.read_text()) if path.is_file() else {}
    wanted = {**current, **GENERATION_DEFAULTS}
    if wanted != current:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        partial.replace(path)


def _open_to_readers(root: Path) -> None:
    """Every file readable and every folder enterable by all (save_pretrained may write 0600 files): a kit is read
    by other users, such as the inference image's non-root user when its model folder is mounted in a container."""
    for item in [root, *root.rglob("*")]:
        if not item.is_symlink():
            item.chmod(item.stat().st_mode | (0o555 if item.is_dir() else 0o444))

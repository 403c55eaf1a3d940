"""Train a LoRA adapter of the tiny kit: whatever the user says, greedy decoding answers with one phrase.

The training set is built from a seeded RNG: single- and multi-turn conversations (some with a system message)
of built-in and random-word user messages, each followed by the assistant turn `<phrase><eos>`; only the
answer tokens carry loss. The seed derives from the adapter name, so a name always trains to the same bytes.
"""

from __future__ import annotations

import json
import random
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus import SENTENCES, WORDS

#: The distinctive answer of each standard adapter.
PHRASES: dict[str, str] = {"alpha": "alpha says hello", "beta": "beta says goodbye"}

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class TrainSpec:
    """LoRA and optimizer settings shared by every kit adapter."""

    r: int = 4
    lora_alpha: int = 16
    steps: int = 60
    learning_rate: float = 1e-2
    batch_size: int = 16
    examples: int = 96


TRAIN_SPEC = TrainSpec()


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and use deterministic kernels on one thread, restoring the previous settings after."""
    import torch

    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


def random_message(rng: random.Random) -> str:
    """A built-in sentence or a few random words (so the adapter answers to anything)."""
    if rng.random() < 0.4:
        return rng.choice(SENTENCES[:21])
    length = rng.randint(1, 12)
    return " ".join(rng.choice(WORDS) for _ in range(length)) + rng.choice(("", "?", "!", "."))


def training_conversations(rng: random.Random, count: int, phrase: str) -> list[Messages]:
    """`count` conversations ending in a user turn; earlier assistant turns already answer `phrase`."""
    conversations: list[Messages] = []
    for _ in range(count):
        messages: Messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": random_message(rng)})
        for _ in range(rng.choice((0, 0, 0, 1))):
            messages.append({"role": "user", "content": random_message(rng)})
            messages.append({"role": "assistant", "content": phrase})
        messages.append({"role": "user", "content": random_message(rng)})
        conversations.append(messages)
    return conversations


def prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of a conversation through the chat template, ending with the opened assistant turn."""
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


def greedy_reply(model: Any, tokenizer: Any, messages: Messages, max_new_tokens: int = 16) -> str:
    """The model's greedy answer to `messages` (special tokens dropped); a quick check, not the engine."""
    import torch

    ids = torch.tensor([prompt_ids(tokenizer, messages)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _batches(
    tokenizer: Any, conversations: Sequence[Messages], phrase: str, size: int
) -> list[tuple[Any, ...]]:
    """Right-padded (input_ids, attention_mask, labels) batches; only the answer tokens have labels."""
    import torch

    answer = tokenizer.encode(phrase, add_special_tokens=False) + [tokenizer.eos_token_id]
    rows = [(prompt_ids(tokenizer, conv), answer) for conv in conversations]
    batches = []
    for first in range(0, len(rows), size):
        chunk = rows[first : first + size]
        width = max(len(p) + len(a) for p, a in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (prompt, ans) in enumerate(chunk):
            n = len(prompt) + len(ans)
            input_ids[i, :n] = torch.tensor(prompt + ans)
            labels[i, len(prompt) : n] = torch.tensor(ans)
            mask[i, :n] = 1
        batches.append((input_ids, mask, labels))
    return batches


def train_adapter(kit_dir: Path, name: str, phrase: str, out_dir: Path, spec: TrainSpec = TRAIN_SPEC) -> Path:
    """Train adapter `name` on the kit's base model to answer `phrase`; save it (PEFT format) to `out_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .build import arch_for_model_type

    base_dir = Path(kit_dir) / "base"
    config = json.loads((base_dir / "config.json").read_text())
    arch = arch_for_model_type(config["model_type"])
    seed = zlib.crc32(name.encode())
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with deterministic(seed):
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        lora = LoraConfig(
            r=spec.r,
            lora_alpha=spec.lora_alpha,
            target_modules=list(arch.target_modules),
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated question
            peft_model = get_peft_model(model, lora)
        rng = random.Random(seed)
        conversations = training_conversations(rng, spec.examples, phrase)
        batches = _batches(tokenizer, conversations, phrase, spec.batch_size)
        optimizer = torch.optim.AdamW(
            [p for p in peft_model.parameters() if p.requires_grad], lr=spec.learning_rate, weight_decay=0.0
        )
        peft_model.train()
        for step in range(spec.steps):
            input_ids, mask, labels = batches[step % len(batches)]
            loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    peft_model.peft_config["default"].base_model_name_or_path = arch.base_model_name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers=False: "auto" would look the base model name up on the Hub.
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)
    _normalize_adapter_folder(out_dir)
    return out_dir


def _normalize_adapter_folder(folder: Path) -> None:
    """Keep only the two adapter files, with target modules in a fixed order (peft writes a set)."""
    (folder / "README.md").unlink(missing_ok=True)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

"""Adapter validation: the same rules for an adapter folder on disk, files in memory, or blobs in storage.

Files are given as `AdapterFile` readers (size, ranged read, sha256), so a blob is checked from its first bytes
and the safetensors header without downloading the tensors. Checks run in a fixed order and the first failure
raises `AdapterValidationError` with a machine-readable `code` and a `reason` naming the file, field or tensor:

names (`unsafe_name`) → file set (`too_many_files`, `empty_file`, `too_large`, `pickle_file`, `missing_config`,
`missing_weights`) → config (`invalid_config`, `duplicate_key`, `unsupported_adapter_type`, `base_model_mismatch`,
`rank_too_large`, `target_module_not_allowed`) → safetensors header (`corrupt_safetensors`, `duplicate_key`,
`unsupported_dtype`) → tensors (`unexpected_tensor`, `unpaired_tensor`, `shape_mismatch`, `target_module_mismatch`)
→ the evaluation set, when the folder has `eval.json` (`eval_set_invalid`: activities/eval_set.py's rules; the
parsed set is the report's `eval_set`; the file is content and counts in the digest like any other).

Every JSON document read here (`adapter_config.json`, each safetensors header) refuses a key repeated in any one
object (`duplicate_key`): JSON leaves duplicates undefined and parsers differ (Python's json keeps the last; the
safetensors loader keeps the last tensor entry but refuses a repeated field inside one), so the validator and a
loader could otherwise see different tensors or settings.

Content files are those whose base name does not start with "." or "_" (hidden files and the store's
`_COMPLETE` marker), as in `manifest.adapter_digest`. The safetensors file is never loaded: only its
8-byte little-endian header length and JSON header are read, and every tensor's offsets are checked to tile the
data buffer exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from activities.eval_set import EVAL_SET_NAME, MAX_EVAL_SET_BYTES, EvalSet, EvalSetError
from inference_image.inference_server.manifest import digest_of_files, file_sha256

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9\-_.]{0,62}")
#: Container Apps' rule for app names (lowercase letters, digits, '-'; 2-32 chars; starts with a letter, ends with
#: a letter or digit; no '--').
APP_NAME_PATTERN = re.compile(r"[a-z](?!.*--)[a-z0-9-]{0,30}[a-z0-9]")
_SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20
_MAGIC_BYTES = 8
# safetensors dtypes and their item sizes in bytes (the format's full list).
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}  # fmt: skip
LORA_DTYPES = frozenset({"F16", "BF16", "F32"})
_LORA_TENSOR = re.compile(r"(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[A-Za-z0-9_\-]+)?\.weight")


class AdapterValidationError(ValueError):
    """The adapter breaks a rule: `code` is machine-readable (see module docstring), `reason` is for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class AdapterFile(Protocol):
    """Read access to one adapter file wherever it lives (memory, disk, blob)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`."""
        ...

    def sha256(self) -> str:
        """Hex sha256 of the whole content (a blob may answer with the uploader's claim, re-checked on staging)."""
        ...


class BytesFile:
    """An adapter file held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]

    def sha256(self) -> str:
        return hashlib.sha256(self._data).hexdigest()


class LocalFile:
    """An adapter file on disk; read lazily."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._size = self.path.stat().st_size

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def sha256(self) -> str:
        return file_sha256(self.path)


@dataclass(frozen=True)
class ValidationRules:
    """What an app accepts. `allowed_target_modules` empty: any module; `base_model_aliases` also match."""

    base_model: str
    max_rank: int = 64
    allowed_target_modules: tuple[str, ...] = ()
    base_model_aliases: tuple[str, ...] = ()
    max_total_bytes: int = 2 << 30
    max_files: int = 32

    def __post_init__(self) -> None:
        if not self.base_model:
            raise ValueError("ValidationRules.base_model must not be empty")
        if self.max_rank < 1:
            raise ValueError(f"ValidationRules.max_rank must be >= 1, got {self.max_rank}")
        if self.max_total_bytes < 1:
            raise ValueError(f"ValidationRules.max_total_bytes must be >= 1, got {self.max_total_bytes}")
        if self.max_files < 2:
            raise ValueError(f"ValidationRules.max_files must be >= 2, got {self.max_files}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationRules:
        data = dict(data)
        for key in ("allowed_target_modules", "base_model_aliases"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


@dataclass(frozen=True)
class FileRecord:
    """One content file of an adapter."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class AdapterReport:
    """What validation found: identity (`sha256`, as `manifest.digest_of_files`), files and LoRA facts."""

    sha256: str
    files: tuple[FileRecord, ...]
    base_model: str
    rank: int
    target_modules: tuple[str, ...]
    total_bytes: int
    tensor_count: int
    eval_set: dict[str, Any] | None = None  # the folder's `eval.json`, parsed (`EvalSet.to_dict`), None: absent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterReport:
        data = dict(data)
        data["files"] = tuple(FileRecord(**f) for f in data["files"])
        data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)


def check_name(kind: str, value: str) -> str:
    """An adapter name: `[a-z0-9][a-z0-9-_.]{0,62}` without '..'; an app name (`kind` "app"): Container Apps'
    own rule, `APP_NAME_PATTERN` (no '.', so `<app>.` prefixes exactly one app's deployment ids)."""
    if kind == "app":
        if not isinstance(value, str) or not APP_NAME_PATTERN.fullmatch(value):
            raise AdapterValidationError(
                "unsafe_name", f"app name {value!r} must be 2-32 lowercase letters, digits and '-', starting with a "
                "letter, not ending with '-' and without '--'")
        return value
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise AdapterValidationError(
            "unsafe_name", f"{kind} name {value!r} must match [a-z0-9][a-z0-9-_.]{{0,62}} without '..'"
        )
    return value


def unsafe_path_problem(name: str) -> str | None:
    """Why `name` is not a safe relative POSIX path (empty, a backslash, a control character, absolute, an empty,
    `.` or `..` segment, over 255 characters), or None."""
    if not name:
        return "is empty"
    if "\\" in name:
        return "contains a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' segment"
    if len(name) > 255:
        return "is longer than 255 characters"
    return None


def check_file_name(name: str) -> str:
    """A relative POSIX file name inside an adapter: a safe path (`unsafe_path_problem`) whose segments use letters,
    digits, '.', '_' and '-'."""
    problem = unsafe_path_problem(name)
    if problem is None and not all(_SEGMENT_PATTERN.fullmatch(p) for p in name.split("/")):
        problem = "must use letters, digits, '.', '_' and '-' (starting with a letter or digit)"
    if problem:
        raise AdapterValidationError("unsafe_name", f"file name {name!r} {problem}")
    return name


def is_content_name(name: str) -> bool:
    """Hidden files and `_`-prefixed files (the completion marker) are not adapter content."""
    return not name.rsplit("/", 1)[-1].startswith((".", "_"))


def folder_files(folder: Path) -> dict[str, LocalFile]:
    """The content files of an adapter folder, by relative POSIX name (symlinks are refused)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterValidationError("missing_config", f"adapter folder {str(folder)!r} does not exist")
    files: dict[str, LocalFile] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise AdapterValidationError("unsafe_name", f"file {rel!r} is a symbolic link")
        if path.is_file() and is_content_name(rel):
            files[rel] = LocalFile(path)
    return files


def validate_adapter_folder(folder: Path, rules: ValidationRules) -> AdapterReport:
    """Validate an adapter folder on disk (the CLI's check before upload)."""
    return validate_adapter_files(folder_files(folder), rules)


def validate_adapter_files(files: Mapping[str, AdapterFile | bytes], rules: ValidationRules) -> AdapterReport:
    """Validate an adapter given its content files by relative name; raise `AdapterValidationError` on a failure."""
    readers: dict[str, AdapterFile] = {
        name: BytesFile(f) if isinstance(f, bytes | bytearray) else f
        for name, f in files.items()
        if is_content_name(name)
    }
    _check_file_set(readers, rules)
    config = _read_config(readers[CONFIG_NAME])
    rank, targets, rank_values = _check_config(config, rules)
    tensors = parse_safetensors_header(readers[WEIGHTS_NAME], WEIGHTS_NAME)
    _check_tensors(tensors, rank_values, targets)
    eval_set = _read_eval_set(readers[EVAL_SET_NAME]) if EVAL_SET_NAME in readers else None
    records = tuple(FileRecord(name, readers[name].size, readers[name].sha256()) for name in sorted(readers))
    return AdapterReport(
        sha256=digest_of_files((r.name, r.sha256) for r in records),
        files=records,
        base_model=str(config["base_model_name_or_path"]),
        rank=rank,
        target_modules=tuple(sorted(targets)) if targets is not None else (),
        total_bytes=sum(r.size for r in records),
        tensor_count=len(tensors),
        eval_set=eval_set.to_dict() if eval_set else None,
    )


def _check_file_set(files: Mapping[str, AdapterFile], rules: ValidationRules) -> None:
    for name in files:
        check_file_name(name)
    if len(files) > rules.max_files:
        raise AdapterValidationError(
            "too_many_files", f"{len(files)} files, at most {rules.max_files} allowed"
        )
    total = 0
    for name, f in sorted(files.items()):
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise AdapterValidationError(
                "pickle_file", f"{name!r} is a pickle-based checkpoint; only safetensors weights are accepted"
            )
        if f.size <= 0:
            raise AdapterValidationError("empty_file", f"{name!r} is empty")
        total += f.size
    if total > rules.max_total_bytes:
        raise AdapterValidationError(
            "too_large", f"adapter is {total} bytes, the limit is {rules.max_total_bytes}"
        )
    for name, f in sorted(files.items()):
        # A safetensors file starts with a length, not a magic: its header parse proves what it is.
        if name.endswith(".safetensors"):
            if name != WEIGHTS_NAME:
                parse_safetensors_header(f, name)
        elif _looks_like_pickle(f.read(0, _MAGIC_BYTES)):
            raise AdapterValidationError(
                "pickle_file", f"{name!r} starts with a pickle or torch-zip signature"
            )
    if CONFIG_NAME not in files:
        raise AdapterValidationError("missing_config", f"{CONFIG_NAME} is missing")
    if WEIGHTS_NAME not in files:
        raise AdapterValidationError("missing_weights", f"{WEIGHTS_NAME} is missing")


def _looks_like_pickle(head: bytes) -> bool:
    """Pickle protocol 2+ (`\\x80` + protocol byte) or a zip archive (torch.save's format)."""
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(b"PK\x03\x04")


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for `json.loads`: an object's pairs, refusing a key seen twice (after unescaping)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _loads_unique(raw: bytes, label: str, code: str = "duplicate_key") -> Any:
    """Parse UTF-8 JSON whose objects have unique keys; a repeated key raises `code` naming `label`.
    Other parse errors propagate as `UnicodeDecodeError` / `json.JSONDecodeError` for the caller's code."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_object)
    except _DuplicateKeyError as exc:
        key = exc.key if len(exc.key) <= 120 else exc.key[:120] + "…"
        raise AdapterValidationError(
            code, f"{label}: key {key!r} appears more than once in one JSON object"
        ) from None


def _read_eval_set(f: AdapterFile) -> EvalSet:
    """The folder's evaluation set; any problem is `eval_set_invalid` naming the field (or the JSON error)."""
    if f.size > MAX_EVAL_SET_BYTES:
        raise AdapterValidationError(
            "eval_set_invalid", f"{EVAL_SET_NAME} is {f.size} bytes, at most {MAX_EVAL_SET_BYTES}"
        )
    try:
        return EvalSet.from_dict(_loads_unique(f.read(0, f.size), EVAL_SET_NAME, "eval_set_invalid"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterValidationError("eval_set_invalid", f"{EVAL_SET_NAME} is not valid JSON: {exc}") from None
    except EvalSetError as exc:
        raise AdapterValidationError("eval_set_invalid", f"{EVAL_SET_NAME}: {exc}") from None


def _read_config(f: AdapterFile) -> dict[str, Any]:
    if f.size > MAX_CONFIG_BYTES:
        raise AdapterValidationError(
            "too_large", f"{CONFIG_NAME} is {f.size} bytes, at most {MAX_CONFIG_BYTES}"
        )
    try:
        config = _loads_unique(f.read(0, f.size), CONFIG_NAME)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterValidationError("invalid_config", f"{CONFIG_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterValidationError("invalid_config", f"{CONFIG_NAME} must be a JSON object")
    return config


def _check_config(config: dict[str, Any], rules: ValidationRules) -> tuple[int, set[str] | None, set[int]]:
    """Return (r, target modules or None when the config gives a regex, every rank the tensors may use)."""
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterValidationError(
            "unsupported_adapter_type", f"peft_type is {peft_type!r}, only 'LORA' is served"
        )
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise AdapterValidationError("invalid_config", "base_model_name_or_path is missing")
    accepted = {name.rstrip("/") for name in (rules.base_model, *rules.base_model_aliases)}
    if base.rstrip("/") not in accepted:
        raise AdapterValidationError(
            "base_model_mismatch", f"adapter was trained on {base!r}, the app serves {rules.base_model!r}"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterValidationError("invalid_config", f"r must be a positive integer, got {rank!r}")
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict) or not all(isinstance(v, int) and v >= 1 for v in pattern.values()):
        raise AdapterValidationError(
            "invalid_config", "rank_pattern must map module patterns to positive integers"
        )
    rank_values = {rank, *pattern.values()}
    if max(rank_values) > rules.max_rank:
        raise AdapterValidationError(
            "rank_too_large", f"rank {max(rank_values)} exceeds the server's max rank {rules.max_rank}"
        )
    raw_targets = config.get("target_modules")
    if isinstance(raw_targets, str):
        if rules.allowed_target_modules:
            raise AdapterValidationError(
                "target_module_not_allowed",
                f"target_modules is the pattern {raw_targets!r}; list the modules ({', '.join(rules.allowed_target_modules)})",
            )
        return rank, None, rank_values
    if (
        not isinstance(raw_targets, list)
        or not raw_targets
        or not all(isinstance(t, str) for t in raw_targets)
    ):
        raise AdapterValidationError(
            "invalid_config", "target_modules must be a non-empty list of module names"
        )
    targets = set(raw_targets)
    if rules.allowed_target_modules:
        refused = sorted(targets - set(rules.allowed_target_modules))
        if refused:
            raise AdapterValidationError(
                "target_module_not_allowed",
                f"target modules {refused} are not allowed; allowed: {sorted(rules.allowed_target_modules)}",
            )
    return rank, targets, rank_values


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_safetensors_header(f: AdapterFile, label: str = WEIGHTS_NAME) -> dict[str, TensorInfo]:
    """Parse and bounds-check a safetensors header (never the tensors); raise `corrupt_safetensors` or
    `duplicate_key`."""

    def corrupt(why: str) -> AdapterValidationError:
        return AdapterValidationError("corrupt_safetensors", f"{label}: {why}")

    if f.size < 8:
        raise corrupt(f"{f.size} bytes is too short for the 8-byte header length")
    (length,) = struct.unpack("<Q", f.read(0, 8))
    if length < 2 or length > min(f.size - 8, MAX_HEADER_BYTES):
        raise corrupt(f"header length {length} does not fit the file ({f.size} bytes)")
    raw = f.read(8, length)
    if len(raw) != length:
        raise corrupt(f"header truncated: read {len(raw)} of {length} bytes")
    try:
        header = _loads_unique(raw, label)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise corrupt("header must be a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise corrupt("__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(name, entry, corrupt)
    buffer = f.size - 8 - length
    cursor = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != cursor:
            raise corrupt(f"tensor {t.name!r} starts at {t.begin}, expected {cursor} (gap or overlap)")
        cursor = t.end
    if cursor != buffer:
        raise corrupt(f"tensors cover {cursor} bytes but the data buffer is {buffer} bytes")
    return tensors


def _tensor_info(name: str, entry: Any, corrupt: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise corrupt(f"tensor {name!r} entry must be an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise corrupt(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise corrupt(f"tensor {name!r} shape {shape!r} must be a list of non-negative integers")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise corrupt(f"tensor {name!r} data_offsets {offsets!r} must be [begin, end] with 0 <= begin <= end")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise corrupt(
            f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {expected}"
        )
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


def _check_tensors(tensors: dict[str, TensorInfo], rank_values: set[int], targets: set[str] | None) -> None:
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for t in tensors.values():
        match = _LORA_TENSOR.fullmatch(t.name)
        if not match:
            raise AdapterValidationError(
                "unexpected_tensor",
                f"tensor {t.name!r} is not a LoRA A/B weight (modules_to_save is not served)",
            )
        if t.dtype not in LORA_DTYPES:
            raise AdapterValidationError(
                "unsupported_dtype",
                f"tensor {t.name!r} is {t.dtype}; LoRA weights must be one of {sorted(LORA_DTYPES)}",
            )
        pairs.setdefault(match["module"], {})[match["side"]] = t
    if not pairs:
        raise AdapterValidationError("unexpected_tensor", f"{WEIGHTS_NAME} holds no LoRA tensors")
    for module, sides in sorted(pairs.items()):
        missing = {"A", "B"} - sides.keys()
        if missing:
            raise AdapterValidationError(
                "unpaired_tensor", f"module {module!r} has no lora_{missing.pop()} tensor"
            )
        a, b = sides["A"], sides["B"]
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise AdapterValidationError(
                "shape_mismatch",
                f"module {module!r}: lora_A {list(a.shape)} and lora_B {list(b.shape)} must be 2-D",
            )
        if a.shape[0] != b.shape[1]:
            raise AdapterValidationError(
                "shape_mismatch",
                f"module {module!r}: lora_A {list(a.shape)} is [r, in] and lora_B {list(b.shape)} is [out, r]; r differs",
            )
        if a.shape[0] not in rank_values:
            raise AdapterValidationError(
                "shape_mismatch",
                f"module {module!r}: rank {a.shape[0]} does not match r={sorted(rank_values)}",
            )
        leaf = module.rsplit(".", 1)[-1]
        if targets is not None and leaf not in targets:
            raise AdapterValidationError(
                "target_module_mismatch", f"module {module!r} is not among target_modules {sorted(targets)}"
            )

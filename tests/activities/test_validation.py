"""Adapter validation rules on hand-built adapters: one valid one and a bad variant per failure code."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest

from activities.validation import (
    AdapterReport,
    AdapterValidationError,
    ValidationRules,
    check_name,
    validate_adapter_files,
    validate_adapter_folder,
)
from inference_image.inference_server.manifest import adapter_digest
from tests.activities.lora_builder import (
    BASE_MODEL,
    adapter_files,
    config_bytes,
    lora_tensors,
    safetensors_bytes,
    write_adapter,
)

RULES = ValidationRules(
    base_model=BASE_MODEL, max_rank=8, allowed_target_modules=("q_proj", "k_proj", "v_proj")
)
WEIGHTS = "adapter_model.safetensors"


def fails(files: dict[str, bytes], code: str, rules: ValidationRules = RULES) -> str:
    """Validate, expect `code`, return the reason."""
    with pytest.raises(AdapterValidationError) as info:
        validate_adapter_files(files, rules)
    assert info.value.code == code, info.value.reason
    assert isinstance(info.value, ValueError)
    return info.value.reason


def with_weights(tensors: dict[str, tuple[str, list[int]]], **config: object) -> dict[str, bytes]:
    files = adapter_files(**config)
    files[WEIGHTS] = safetensors_bytes(tensors)
    return files


def test_valid_adapter_report() -> None:
    """A well-formed adapter passes and the report carries identity, rank, modules and files."""
    report = validate_adapter_files(adapter_files(seed="a"), RULES)
    assert report.rank == 4
    assert report.base_model == BASE_MODEL
    assert report.target_modules == ("q_proj", "v_proj")
    assert [f.name for f in report.files] == ["README.md", "adapter_config.json", WEIGHTS]
    assert report.tensor_count == 8
    assert AdapterReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_folder_digest_matches_manifest_digest(tmp_path: Path) -> None:
    """A folder's report sha256 equals manifest.adapter_digest; hidden files and the marker are ignored."""
    folder = write_adapter(tmp_path / "a", adapter_files(seed="x"))
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "_COMPLETE").write_text("{}")
    report = validate_adapter_folder(folder, RULES)
    assert report.sha256 == adapter_digest(folder)
    assert report.sha256 != validate_adapter_files(adapter_files(seed="y"), RULES).sha256


def test_missing_config() -> None:
    """No adapter_config.json is missing_config."""
    files = adapter_files()
    del files["adapter_config.json"]
    assert "adapter_config.json" in fails(files, "missing_config")


def test_missing_weights() -> None:
    """No safetensors file is missing_weights."""
    files = adapter_files()
    del files[WEIGHTS]
    assert WEIGHTS in fails(files, "missing_weights")


@pytest.mark.parametrize("name", ["adapter_model.bin", "optimizer.pt", "x.pth", "state.pkl", "last.ckpt"])
def test_pickle_suffix_rejected(name: str) -> None:
    """Pickle-format checkpoint names are refused whatever their content."""
    files = adapter_files()
    files[name] = b"not really a pickle"
    assert name in fails(files, "pickle_file")


def test_pickle_magic_rejected() -> None:
    """A pickle hidden under an innocent name is detected by its signature."""
    files = adapter_files()
    files["notes.txt"] = pickle.dumps({"a": 1}, protocol=4)
    assert "notes.txt" in fails(files, "pickle_file")


def test_torch_zip_magic_rejected() -> None:
    """A zip archive (torch.save's format) is treated as a pickle."""
    files = adapter_files()
    files["extra.data"] = b"PK\x03\x04rest"
    assert "extra.data" in fails(files, "pickle_file")


def test_base_model_mismatch() -> None:
    """An adapter trained on another base names both models."""
    reason = fails(adapter_files(base_model_name_or_path="other/llama"), "base_model_mismatch")
    assert "other/llama" in reason and BASE_MODEL in reason


def test_base_model_alias_accepted() -> None:
    """An alias of the base model (the hub id of a local path) is accepted."""
    rules = ValidationRules(base_model=BASE_MODEL, base_model_aliases=("org/tiny-llama",))
    assert validate_adapter_files(adapter_files(base_model_name_or_path="org/tiny-llama"), rules).rank == 4


def test_rank_too_large() -> None:
    """r above max_rank is refused with both numbers."""
    files = with_weights(lora_tensors(r=16), r=16)
    reason = fails(files, "rank_too_large")
    assert "16" in reason and "8" in reason


def test_rank_pattern_counts() -> None:
    """A rank_pattern entry above max_rank is refused too."""
    fails(adapter_files(rank_pattern={"q_proj": 32}), "rank_too_large")


def test_target_module_not_allowed() -> None:
    """A target module outside the allowed set is named."""
    files = with_weights(lora_tensors(modules=("q_proj", "o_proj")), target_modules=["q_proj", "o_proj"])
    assert "o_proj" in fails(files, "target_module_not_allowed")


def test_regex_target_modules_refused_when_list_required() -> None:
    """A regex target_modules cannot be checked against an allow list."""
    fails(adapter_files(target_modules=".*proj"), "target_module_not_allowed")


def test_tensor_outside_target_modules() -> None:
    """A LoRA tensor for a module the config does not list is target_module_mismatch."""
    files = with_weights(lora_tensors(modules=("q_proj", "k_proj")))
    assert "k_proj" in fails(files, "target_module_mismatch")


def test_shape_rank_mismatch() -> None:
    """Tensors of rank 2 under r=4 are shape_mismatch."""
    assert "rank 2" in fails(with_weights(lora_tensors(r=2)), "shape_mismatch")


def test_shape_a_b_disagree() -> None:
    """lora_A [r, in] and lora_B [out, r'] with r != r' are shape_mismatch."""
    tensors = lora_tensors()
    name = next(n for n in tensors if n.endswith("lora_B.weight"))
    tensors[name] = ("F16", [8, 3])
    assert "r differs" in fails(with_weights(tensors), "shape_mismatch")


def test_shape_not_2d() -> None:
    """A 3-D LoRA tensor is shape_mismatch."""
    tensors = lora_tensors()
    name = next(n for n in tensors if n.endswith("lora_A.weight"))
    tensors[name] = ("F16", [4, 8, 1])
    assert "2-D" in fails(with_weights(tensors), "shape_mismatch")


def test_unpaired_tensor() -> None:
    """A lora_A without its lora_B is unpaired_tensor, naming the module."""
    tensors = lora_tensors()
    name = next(n for n in tensors if n.endswith("lora_B.weight"))
    del tensors[name]
    assert "lora_B" in fails(with_weights(tensors), "unpaired_tensor")


def test_unexpected_tensor() -> None:
    """A full weight (modules_to_save) is not served."""
    tensors = lora_tensors()
    tensors["base_model.model.lm_head.weight"] = ("F16", [8, 8])
    assert "lm_head" in fails(with_weights(tensors), "unexpected_tensor")


def test_unsupported_dtype() -> None:
    """Integer LoRA weights are refused."""
    fails(with_weights(lora_tensors(dtype="I16")), "unsupported_dtype")


def test_empty_file() -> None:
    """A zero-byte file is empty_file."""
    files = adapter_files()
    files["README.md"] = b""
    assert "README.md" in fails(files, "empty_file")


def test_too_large() -> None:
    """The total size limit is enforced before reading content."""
    rules = ValidationRules(base_model=BASE_MODEL, max_total_bytes=100)
    assert "100" in fails(adapter_files(), "too_large", rules)


def test_too_many_files() -> None:
    """More files than allowed is too_many_files."""
    files = adapter_files()
    files.update({f"f{i}.txt": b"x" for i in range(5)})
    fails(files, "too_many_files", ValidationRules(base_model=BASE_MODEL, max_files=4))


@pytest.mark.parametrize(
    "name",
    [
        "../evil.json",
        "/etc/passwd",
        "a\\b.json",
        "dir/../x",
        "bad\x01name",
        "C:/x",
        "a//b",
        "sp ace.txt",
        "ü.txt",
    ],
)
def test_unsafe_file_names(name: str) -> None:
    """Traversal, absolute, backslash, control and odd characters are unsafe_name."""
    files = adapter_files()
    files[name] = b"x"
    assert repr(name) in fails(files, "unsafe_name")


@pytest.mark.parametrize("name", ["My-App", "-x", "", "a" * 64, "a/b", "a..b", "x y"])
def test_unsafe_app_names(name: str) -> None:
    """App and adapter names follow [a-z0-9][a-z0-9-_.]{0,62}."""
    with pytest.raises(AdapterValidationError) as info:
        check_name("adapter", name)
    assert info.value.code == "unsafe_name"


def test_safe_names_accepted() -> None:
    """Typical names pass; app names follow Container Apps' rule (no '.' or '_'), adapter names are wider."""
    assert check_name("app", "chat-1") == "chat-1"
    assert check_name("adapter", "chat-1.v2_x") == "chat-1.v2_x"
    assert check_name("adapter", "a" * 63) == "a" * 63
    for app in ("chat-1.v2_x", "demo.x", "Demo", "a", "-a", "a-", "a" * 33, "a--b"):
        with pytest.raises(ValueError, match="app name"):
            check_name("app", app)


def test_invalid_config_json() -> None:
    """A config that is not JSON is invalid_config."""
    files = adapter_files()
    files["adapter_config.json"] = b"{not json"
    fails(files, "invalid_config")


def test_invalid_rank_type() -> None:
    """r must be a positive integer."""
    assert "r must" in fails(
        {**adapter_files(), "adapter_config.json": config_bytes(r="4")}, "invalid_config"
    )


def test_non_lora_peft_type() -> None:
    """Other PEFT methods are refused."""
    fails(adapter_files(peft_type="IA3"), "unsupported_adapter_type")


def corrupt(files_weights: bytes) -> str:
    files = adapter_files()
    files[WEIGHTS] = files_weights
    return fails(files, "corrupt_safetensors")


def test_safetensors_too_short() -> None:
    """Fewer than 8 bytes cannot hold the header length."""
    assert "too short" in corrupt(b"\x01\x02")


def test_safetensors_header_length_out_of_bounds() -> None:
    """A header length beyond the file is refused without reading it."""
    assert "does not fit" in corrupt(struct.pack("<Q", 1 << 40) + b"{}")


def test_safetensors_header_not_json() -> None:
    """A header that is not JSON is corrupt."""
    assert "JSON" in corrupt(struct.pack("<Q", 4) + b"{{{{")


def test_safetensors_truncated_data() -> None:
    """Tensors that extend past the end of the file are corrupt."""
    good = safetensors_bytes(lora_tensors())
    assert "data buffer" in corrupt(good[:-2])


def test_safetensors_dtype_shape_size_disagree() -> None:
    """data_offsets that do not match dtype x shape are corrupt."""
    raw = json.dumps({"m.lora_A.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 64]}}).encode()
    assert "needs 128" in corrupt(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)


def test_safetensors_overlap() -> None:
    """Overlapping tensors are corrupt."""
    header = {
        "m.lora_A.weight": {"dtype": "F16", "shape": [4, 8], "data_offsets": [0, 64]},
        "m.lora_B.weight": {"dtype": "F16", "shape": [8, 4], "data_offsets": [32, 96]},
    }
    raw = json.dumps(header).encode()
    assert "overlap" in corrupt(struct.pack("<Q", len(raw)) + raw + b"\0" * 96)


def test_safetensors_unknown_dtype() -> None:
    """An unknown dtype is corrupt."""
    raw = json.dumps({"m.lora_A.weight": {"dtype": "F12", "shape": [1], "data_offsets": [0, 2]}}).encode()
    assert "F12" in corrupt(struct.pack("<Q", len(raw)) + raw + b"\0\0")


def test_rules_validate_themselves() -> None:
    """Bad rules fail on construction naming the field."""
    with pytest.raises(ValueError, match="max_rank"):
        ValidationRules(base_model="b", max_rank=0)
    assert ValidationRules.from_dict(RULES.to_dict()) == RULES


def test_extra_safetensors_parsed_not_magic_checked() -> None:
    """Another .safetensors file is checked by its header, not mistaken for a pickle by its length bytes."""
    files = adapter_files()
    files["extra.safetensors"] = safetensors_bytes({"x": ("F16", [320])})  # header length bytes may look odd
    assert validate_adapter_files(files, RULES).tensor_count == 8
    files["extra.safetensors"] = b"\x80\x04not a header"
    assert "extra.safetensors" in fails(files, "corrupt_safetensors")


# Duplicate keys (issue #12): JSON leaves them undefined, so what the validator checked and what a loader reads
# could differ; every JSON document the validator reads refuses a key repeated in one object.

_ENTRY_A = '{"dtype": "F16", "shape": [4, 8], "data_offsets": [0, 64]}'
_ENTRY_B = '{"dtype": "F16", "shape": [8, 4], "data_offsets": [64, 128]}'


def header_file(header_json: str, buffer: int) -> bytes:
    """A safetensors file from hand-written header text (duplicates cannot come from a dict)."""
    raw = header_json.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * buffer


def duplicate(files: dict[str, bytes]) -> str:
    return fails(files, "duplicate_key")


def test_config_duplicate_top_level_key() -> None:
    """adapter_config.json with "r" twice: the first says 4 (passes max_rank), the last 64; refused, naming both."""
    files = adapter_files()
    text = files["adapter_config.json"].decode()
    files["adapter_config.json"] = text.replace('"r": 4,', '"r": 4, "r": 64,').encode()
    assert text != files["adapter_config.json"].decode()
    reason = duplicate(files)
    assert "adapter_config.json" in reason and "'r'" in reason


def test_config_duplicate_nested_key() -> None:
    """A repeated key inside a nested object (rank_pattern) is refused too."""
    files = adapter_files()
    files["adapter_config.json"] = files["adapter_config.json"].replace(
        b'"r": 4,', b'"r": 4, "rank_pattern": {"q_proj": 4, "q_proj": 64},'
    )
    assert "'q_proj'" in duplicate(files)


def test_config_duplicate_key_spelled_with_escapes() -> None:
    """Keys are compared after unescaping: "r" and "\\u0072" are the same key."""
    files = adapter_files()
    files["adapter_config.json"] = files["adapter_config.json"].replace(b'"r": 4,', b'"r": 4, "\\u0072": 4,')
    assert "'r'" in duplicate(files)


def test_safetensors_duplicate_tensor_name() -> None:
    """Two entries for one tensor name, each tiling the buffer alone: the old parser kept the last silently."""
    header = (
        '{"m.q_proj.lora_A.weight": {"dtype": "F16", "shape": [4, 8], "data_offsets": [0, 64]}, '
        '"m.q_proj.lora_A.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}, '
        '"m.q_proj.lora_B.weight": ' + _ENTRY_B + "}"
    )
    files = adapter_files()
    files[WEIGHTS] = header_file(header, 128)
    reason = duplicate(files)
    assert WEIGHTS in reason and "m.q_proj.lora_A.weight" in reason


def test_safetensors_duplicate_field_in_entry() -> None:
    """A tensor entry with "dtype" twice is refused."""
    header = (
        '{"m.q_proj.lora_A.weight": {"dtype": "F16", "dtype": "F32", "shape": [4, 8], "data_offsets": [0, 64]}, '
        '"m.q_proj.lora_B.weight": ' + _ENTRY_B + "}"
    )
    files = adapter_files()
    files[WEIGHTS] = header_file(header, 128)
    assert "'dtype'" in duplicate(files)


def test_safetensors_duplicate_metadata_key() -> None:
    """__metadata__ with a key twice is refused (its value is what a loader reports as the file's metadata)."""
    header = (
        '{"__metadata__": {"format": "pt", "format": "tf"}, '
        '"m.q_proj.lora_A.weight": ' + _ENTRY_A + ', "m.q_proj.lora_B.weight": ' + _ENTRY_B + "}"
    )
    files = adapter_files()
    files[WEIGHTS] = header_file(header, 128)
    assert "'format'" in duplicate(files)
    # the same file without the duplicate is a valid adapter (the test isolates the duplicate)
    files[WEIGHTS] = header_file(header.replace('"format": "pt", ', ""), 128)
    assert validate_adapter_files(files, RULES).tensor_count == 2


def test_extra_safetensors_duplicate_key() -> None:
    """Another .safetensors file in the folder gets the same header check, naming that file."""
    files = adapter_files()
    files["extra.safetensors"] = header_file('{"x": ' + _ENTRY_A + ', "x": ' + _ENTRY_A + "}", 64)
    assert "extra.safetensors" in duplicate(files)


def test_duplicate_keys_long_key_reason_bounded() -> None:
    """A huge repeated key is cut in the reason (the reason travels into records and logs)."""
    files = adapter_files()
    key = "k" * 10_000
    files["adapter_config.json"] = files["adapter_config.json"].replace(
        b'"r": 4,', f'"r": 4, "{key}": 1, "{key}": 2,'.encode()
    )
    assert len(duplicate(files)) < 400


def test_real_safetensors_loader_accepts_what_validation_refuses(tmp_path: Path) -> None:
    """Why the check exists: the installed safetensors loader opens a header that names one tensor twice
    (keeping one entry silently); validation refuses the same bytes."""
    safetensors = pytest.importorskip("safetensors")
    header = (
        '{"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}, '
        '"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    )
    path = tmp_path / "dup.safetensors"
    path.write_bytes(header_file(header, 4))
    with safetensors.safe_open(str(path), "np") as handle:
        assert list(handle.keys()) == ["t"]
    from activities.validation import LocalFile, parse_safetensors_header

    with pytest.raises(AdapterValidationError) as info:
        parse_safetensors_header(LocalFile(path), "dup.safetensors")
    assert info.value.code == "duplicate_key"


# -- the folder's evaluation set (eval.json) ------------------------------------------------------------------------

EVAL = {"min_score": 0.5, "cases": [{"messages": [{"role": "user", "content": "hi"}], "expect": {"contains": "hello"}}]}


def with_eval(raw: bytes) -> dict[str, bytes]:
    return {**adapter_files(), "eval.json": raw}


def test_eval_set_in_report_and_digest(tmp_path: Path) -> None:
    """A good eval.json is parsed into the report (defaults filled in, plain JSON), and it is content: it counts
    in the digest, as manifest.adapter_digest computes it for the folder."""
    plain = validate_adapter_files(adapter_files(), RULES)
    assert plain.eval_set is None and plain.to_dict()["eval_set"] is None
    report = validate_adapter_files(with_eval(json.dumps(EVAL).encode()), RULES)
    assert report.eval_set == {**EVAL, "max_tokens": 32}
    assert "eval.json" in [f.name for f in report.files]
    assert report.sha256 != plain.sha256
    other = validate_adapter_files(with_eval(json.dumps({**EVAL, "min_score": 0.6}).encode()), RULES)
    assert other.sha256 != report.sha256
    assert report.sha256 == adapter_digest(write_adapter(tmp_path / "a", with_eval(json.dumps(EVAL).encode())))
    assert AdapterReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert validate_adapter_folder(tmp_path / "a", RULES).eval_set == report.eval_set


def test_eval_set_only_at_the_top_of_the_folder() -> None:
    """sub/eval.json is an ordinary content file."""
    report = validate_adapter_files({**adapter_files(), "sub/eval.json": b"not json"}, RULES)
    assert report.eval_set is None


@pytest.mark.parametrize(("raw", "why"), [
    (b"{not json", "eval.json is not valid JSON"),
    (b"\xff\xfe", "eval.json is not valid JSON"),
    (b'{"cases": [], "cases": []}', "eval.json: key 'cases' appears more than once in one JSON object"),
    (json.dumps({**EVAL, "min_score": 2}).encode(), "eval.json: min_score: must be a number in [0, 1]"),
    (json.dumps({"cases": [EVAL["cases"][0], {"messages": [{"role": "user", "content": "x"}],
                                              "expect": {"pattern": "(x"}}]}).encode(),
     "eval.json: cases[1].expect.pattern: not a valid regular expression"),
    (b" " * (256 << 10) + b"{}", f"eval.json is {(256 << 10) + 2} bytes, at most {256 << 10}"),
])
def test_eval_set_invalid(raw: bytes, why: str) -> None:
    """A bad eval.json refuses the adapter with eval_set_invalid and the reason naming the field."""
    assert fails(with_eval(raw), "eval_set_invalid").startswith(why)

"""Contract with the real SGLang (issue #12): every command line our code launches SGLang with is one SGLang's own
argument handling accepts.

The command lines are built by the real code paths: the ACA container's environment (`ProvisionPlan.build` from
orchestrator settings, plus the platform's INFERENCE_BASE_MODEL_NAME and the image's CMD `--engine sglang`), or
the local defaults (`--engine sglang --model-path M`), then `ServerConfig.from_args` → `SGLangEngine.launch_args`,
for the first launch (no adapters) and a relaunch after a crash (adapters loaded), for several target-module and
rank settings. Two negative controls must be refused: the command line before issue #12 (rank without modules, as
ACA's first launch was) and a served model name with ':' (why the config refuses it).

`test_real_sglang_accepts` feeds them to SGLang's own `prepare_server_args` → `resolve_once` → `check_server_args`
(tests/contracts/sglang_check_args.py) with the python named by SGLANG_CONTRACT_PYTHON (.ci/sglang_contract.sh
builds that venv with the pinned sglang); without it the test is skipped. Two substitutions, both outside the LoRA
and name checks: `--model-path` points at a local folder holding a tiny Llama config.json (ACA's share path does
not exist here; resolution reads the model's config), and `--device cpu` is appended (no accelerator here;
SGLang's device detection would stop resolution before its checks). The fake SGLang's `check_args` must give the
same verdicts (always checked, and against the real one when it runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from activities.config import DEFAULT_TARGET_MODULES, InferenceConfig, ProvisionParameters, Settings
from activities.platform.aca import BASE_MODEL_ENV
from activities.provisioning import ProvisionPlan
from inference_server.config import ServerConfig
from inference_server.engines.sglang_engine import SGLangEngine, SGLangOptions
from tests.fakes import fake_sglang

CONTRACT_PYTHON = os.environ.get("SGLANG_CONTRACT_PYTHON", "")
CHECKER = Path(__file__).with_name("sglang_check_args.py")
#: What the image sets (inference_image/Dockerfile ENV) under the app's own environment, and its CMD's arguments.
IMAGE_ENV = {"INFERENCE_ENGINE": "sglang", "INFERENCE_MODEL_PATH": "/models/base", "INFERENCE_ADAPTER_STORE": "/adapters",
             "INFERENCE_HOST": "0.0.0.0", "INFERENCE_PORT": "8000"}
IMAGE_ARGS = ["--engine", "sglang"]
TARGET_MODULE_SETTINGS = {
    "default": None,
    "attention": "q_proj,k_proj,v_proj,o_proj",
    "q_v": "q_proj,v_proj",
    "fused": "qkv_proj,o_proj,gate_up_proj,down_proj",
}
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16, "num_hidden_layers": 2, "vocab_size": 256,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1,
    "tie_word_embeddings": True, "torch_dtype": "float32",
}


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]  # what SGLangEngine launches (without the `python -m sglang.launch_server` prefix)
    accepted: bool


def aca_env(modules: str | None, rank: str | None) -> dict[str, str]:
    """The ACA container's environment for these orchestrator settings (image ENV, then the app's env)."""
    app_settings = {"BASE_MODEL_NAME": "tiny-llama", "PLATFORM": "aca", "INFERENCE_IMAGE": "ghcr.io/org/inference:1",
                    "INFERENCE_API_KEY": "k"}
    if modules is not None:
        app_settings["ALLOWED_TARGET_MODULES"] = modules
    if rank is not None:
        app_settings["MAX_LORA_RANK"] = rank
    settings = Settings.from_env(app_settings)
    config = InferenceConfig(subscription_id="sub", resource_group_name="rg", storage_account_name="stfinetune001",
                             file_share_name="finetune-share", aca_app_name="inference-app")
    params = ProvisionParameters(default_commands=("python", "-m", "inference_server"))
    app = ProvisionPlan.build(config, params, settings, "swedencentral").container_app
    return {**IMAGE_ENV, **app.env, BASE_MODEL_ENV: app.base_model}


def launch_argv(config: ServerConfig, model: Path, adapters: dict[str, Path], *, old: bool = False) -> list[str]:
    engine = SGLangEngine(config.model_path, config.base_model_name,
                          options=SGLangOptions.from_settings(config.sglang), initial_adapters=adapters)
    argv = engine.launch_args(30000)[3:]  # drop `python -m sglang.launch_server`
    assert argv[0] == "--model-path" and argv[1] == str(config.model_path)
    argv[1] = str(model)
    if old and "--lora-target-modules" in argv:  # before issue #12: ACA set the rank, never the modules
        i = argv.index("--lora-target-modules")
        end = next((j for j in range(i + 1, len(argv)) if argv[j].startswith("--")), len(argv))
        del argv[i:end]
    return [*argv, "--device", "cpu"]


def build_cases(root: Path) -> list[Case]:
    model = root / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(TINY_LLAMA))
    adapters = {}
    for name in ("alpha-1", "beta-2"):
        folder = root / "adapters" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8,
                                                                 "target_modules": ["q_proj", "v_proj"]}))
        adapters[name.split("-")[0]] = folder
    cases = []
    for label, modules in TARGET_MODULE_SETTINGS.items():
        for rank in (None, "16"):
            config = ServerConfig.from_args(IMAGE_ARGS, aca_env(modules, rank))
            tag = f"aca-{label}-rank{rank or 'default'}"
            cases.append(Case(f"{tag}-first", launch_argv(config, model, {}), True))
            cases.append(Case(f"{tag}-relaunch", launch_argv(config, model, adapters), True))
    local = ServerConfig.from_args(["--engine", "sglang", "--model-path", str(model)], {})
    cases.append(Case("local-first", launch_argv(local, model, {}), True))
    cases.append(Case("local-relaunch", launch_argv(local, model, adapters), True))
    old = ServerConfig.from_args(IMAGE_ARGS, aca_env(None, None))
    cases.append(Case("control-old-aca-first-launch", launch_argv(old, model, {}, old=True), False))
    colon = launch_argv(local, model, {})
    colon[colon.index("--served-model-name") + 1] = "org/model:v1"
    cases.append(Case("control-colon-served-name", colon, False))
    return cases


def test_cases_cover_the_settings(tmp_path: Path) -> None:
    """The ACA environment now carries the modules; every case but the controls passes rank and modules."""
    env = aca_env(None, None)
    assert env["INFERENCE_LORA_TARGET_MODULES"] == ",".join(DEFAULT_TARGET_MODULES)
    assert env["INFERENCE_MAX_LORA_RANK"] == "64"
    for case in build_cases(tmp_path):
        has_modules = "--lora-target-modules" in case.argv and "--max-lora-rank" in case.argv
        assert has_modules == (case.name != "control-old-aca-first-launch"), case.name


def test_fake_agrees(tmp_path: Path) -> None:
    """The fake SGLang refuses exactly the command lines SGLang refuses (here: the expected verdicts)."""
    for case in build_cases(tmp_path):
        args, _ = fake_sglang.parse_args(case.argv)
        assert (fake_sglang.check_args(args) is None) == case.accepted, case.name


@pytest.fixture(scope="module")
def real_verdicts(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], list[dict]]:
    cases = build_cases(tmp_path_factory.mktemp("sglang-contract"))
    proc = subprocess.run([CONTRACT_PYTHON, str(CHECKER)], input=json.dumps([c.argv for c in cases]),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    assert len(results) == len(cases)
    return cases, results


@pytest.mark.skipif(not CONTRACT_PYTHON, reason="SGLANG_CONTRACT_PYTHON unset (bash .ci/sglang_contract.sh sets it)")
def test_real_sglang_accepts(real_verdicts: tuple[list[Case], list[dict]]) -> None:
    """SGLang's own checks accept every command line we launch, refuse the controls, and agree with the fake."""
    cases, results = real_verdicts
    wrong = [f"{c.name}: expected {'accepted' if c.accepted else 'refused'}, SGLang said "
             f"{r['error'] or 'accepted'}\n  argv: {' '.join(c.argv)}"
             for c, r in zip(cases, results, strict=True) if r["ok"] != c.accepted]
    assert not wrong, "\n".join(wrong)
    refusal = dict(zip((c.name for c in cases), results, strict=True))
    assert "need to specify both --max-lora-rank and --lora-target-modules" in refusal[
        "control-old-aca-first-launch"]["error"]
    assert "cannot contain a colon" in refusal["control-colon-served-name"]["error"]
    print(f"\nSGLang ({CONTRACT_PYTHON}) accepted {sum(r['ok'] for r in results)} command lines, refused the "
          f"{sum(not r['ok'] for r in results)} controls", file=sys.stderr)

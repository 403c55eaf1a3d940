"""docs/deploy.md against the repository: its commands name files, parameters, outputs, routes and CLI subcommands
that exist, its steps run in order, and its sample output has the shape the CLI prints."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from adapterctl.cli import build_parser
from orchestrations.rollout_status import Stage

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/deploy.md"
MAIN = ROOT / "infra/main.bicep"
AZD_BUILTIN = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_PRINCIPAL_ID"}
REPO_PATH = re.compile(r"^(infra|inference_image|docs|\.github|activities|orchestrations|adapterctl)(/|$)")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)


def commands() -> list[list[str]]:
    """Every command line of the ```bash blocks, split like the shell would (loops unrolled to their body)."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                part = re.sub(r"^(for \w+ in .*|done)$|^do\b", "", part).strip()
                if part:
                    out.append(shlex.split(part))
    return out


def bicep_params() -> set[str]:
    return set(re.findall(r"^param (\w+) ", MAIN.read_text(encoding="utf-8"), re.M))


def bicep_outputs() -> set[str]:
    return set(re.findall(r"^output (\w+) ", MAIN.read_text(encoding="utf-8"), re.M))


def azd_variables() -> set[str]:
    """Variables main.parameters.json substitutes (`${NAME}` / `${NAME=default}`)."""
    text = (ROOT / "infra/main.parameters.json").read_text(encoding="utf-8")
    return set(re.findall(r"\$\{(\w+)", text))


def routes() -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / "orchestrations").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r'route="([^"]+)", methods=\[([^\]]+)\]', text):
            for method in re.findall(r'"(\w+)"', m[2]):
                found.add((method, m[1]))
    return found


def route_matches(path: str, route: str) -> bool:
    pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(route))
    return re.fullmatch(pattern, path) is not None


def option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
    return None


def option_values(argv: list[str], *names: str) -> list[str]:
    """Values after an option that takes several (`--parameters a=1 b=2`), up to the next option."""
    values: list[str] = []
    for i, arg in enumerate(argv):
        if arg in names:
            for value in argv[i + 1:]:
                if value.startswith("-"):
                    break
                values.append(value)
    return values


def test_doc_has_commands():
    """The doc's bash blocks parse into a reasonable number of commands."""
    assert len(commands()) > 20


def test_steps_in_order():
    """From sign-in to chat: az login, azd up, image build, provision, base model upload, deploy, chat, in order."""
    lines = [" ".join(c) for c in commands()]

    def first(prefix: str) -> int:
        hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert hits, prefix
        return hits[0]

    order = ["az login", "azd up", "az acr build", "adapterctl provision", "az storage file upload-batch",
             "adapterctl deploy", "adapterctl chat"]
    positions = [first(p) for p in order]
    assert positions == sorted(positions)
    first("func azure functionapp publish")
    first("az deployment group create")


def test_adapterctl_commands_parse():
    """Every adapterctl command in the doc is accepted by adapterctl's own argument parser."""
    parser = build_parser()
    seen = set()
    for argv in commands():
        if argv[0] == "adapterctl":
            args = parser.parse_args(argv[1:])  # SystemExit on an unknown subcommand or flag
            seen.add(args.command)
    assert {"provision", "deploy", "chat", "restart", "apps"} <= seen


def test_bicep_files_and_parameters_exist():
    """`az deployment group create` names the real template and only parameters main.bicep declares."""
    declared = bicep_params()
    used = 0
    for argv in commands():
        if argv[:4] != ["az", "deployment", "group", "create"]:
            continue
        used += 1
        template = option(argv, "-f", "--template-file")
        assert template and (ROOT / template).is_file(), template
        for value in option_values(argv, "-p", "--parameters"):
            if "=" in value:
                assert value.split("=", 1)[0] in declared, value
            else:
                assert (ROOT / value.lstrip("@")).is_file(), value
        required = {"environmentName", "inferenceApiKey"}
        assert required <= {v.split("=", 1)[0] for v in option_values(argv, "-p", "--parameters")}
    assert used >= 2


def test_azd_variables_exist():
    """`azd env set` names main.parameters.json variables; `azd env get-value` / deployment show read outputs."""
    variables = azd_variables()
    outs = bicep_outputs()
    doc = DOC.read_text(encoding="utf-8")
    set_names = set()
    for argv in commands():
        if argv[:3] == ["azd", "env", "set"]:
            assert argv[3] in variables | AZD_BUILTIN, argv[3]
            set_names.add(argv[3])
    for name in re.findall(r"azd env get-value (\w+)", doc):
        assert name in outs | set_names, name
    for name in re.findall(r"properties\.outputs\.(\w+)\.value", doc):
        assert name in outs, name
    assert {"INFERENCE_API_KEY", "ENABLE_BLOB_EVENTS", "INFERENCE_IMAGE_TAG"} <= set_names


def test_image_build_uses_the_inference_context():
    """`az acr build` builds the inference_image folder (it has the Dockerfile) as `inference:<tag>`."""
    builds = [argv for argv in commands() if argv[:3] == ["az", "acr", "build"]]
    assert builds
    for argv in builds:
        context = argv[-1]
        assert (ROOT / context / "Dockerfile").is_file(), context
        image = option(argv, "--image", "-t")
        assert image and image.split(":")[0] == "inference"
        assert option(argv, "--registry", "-r")


def test_http_routes_exist():
    """Every /api/... URL in the doc's commands and prose is a route the orchestrator registers."""
    known = routes()
    doc = DOC.read_text(encoding="utf-8")
    checked = 0
    for argv in commands():
        if argv[0] != "curl":
            continue
        method = option(argv, "-X", "--request") or "GET"
        url = next(a for a in argv if "/api/" in a)
        path = url.split("/api/", 1)[1].split("?", 1)[0]
        assert any(m == method and route_matches(path, r) for m, r in known), (method, path)
        checked += 1
    for method, path in re.findall(r"`(GET|POST) /api/([^`\s]+)`", doc):
        assert (method, path) in known, (method, path)
        checked += 1
    assert checked >= 3


def test_repository_paths_exist():
    """Every repository path the doc names (commands and `code` spans) exists."""
    doc = DOC.read_text(encoding="utf-8")
    names = {a for argv in commands() for a in argv if REPO_PATH.match(a)}
    names |= {m for m in re.findall(r"`([\w./-]+)`", doc) if REPO_PATH.match(m) and "<" not in m}
    assert "infra/main.bicep" in names
    for name in names:
        assert (ROOT / name).exists(), name


def test_function_publish_targets_the_app():
    """`func azure functionapp publish` runs where function_app.py and host.json are (the repository root)."""
    publishes = [argv for argv in commands() if argv[:4] == ["func", "azure", "functionapp", "publish"]]
    assert publishes
    assert (ROOT / "function_app.py").is_file() and (ROOT / "host.json").is_file()


def test_deploy_sample_output_matches_the_cli():
    """The `adapterctl deploy` sample prints what cmd_deploy and follow print, with real stage names."""
    sample = next(b for b in blocks("text") if "uploading to app" in b).splitlines()
    assert re.fullmatch(r"[\w.-]+: valid \(sha256 [0-9a-f]{12}, rank \d+\); uploading to app [\w-]+", sample[0])
    at = next(i for i, line in enumerate(sample) if line.startswith("deployment "))
    progress = [re.fullmatch(r"  uploaded [\d.]+ k?M?B / [\d.]+ [kM]?B \((\d+)%\)", line) for line in sample[1:at - 1]]
    assert all(progress) and [m[1] for m in progress if m][-1] == "100"
    assert re.fullmatch(r"uploaded \d+ files, \d+ bytes", sample[at - 1])
    rollout = re.fullmatch(r"deployment ([\w-]+\.\d{8}T\d{12}-u[0-9a-f]{10})", sample[at])  # an upload's record id
    assert rollout
    stages = [re.fullmatch(r"  (\w+) +(\S+)", line) for line in sample[at + 1:-1]]
    assert all(stages)
    names = [m[1] for m in stages if m]
    assert set(names) <= {s.value for s in Stage}
    assert names[0] == Stage.RECEIVED.value and names[-1] == Stage.LIVE.value
    assert sample[-1] == f"{rollout[1]}: live"


def test_provision_sample_uses_the_instance_id_format():
    """The provision sample's id is `provision-<app>.<time>` as the starter builds it, ending `provisioned`."""
    sample = next(b for b in blocks("text") if b.startswith("provision ")).splitlines()
    m = re.fullmatch(r"provision (provision-([\w-]+)\.\d{8}T\d{12})", sample[0])
    assert m
    assert sample[1] == f"{m[1]}: provisioned"


def test_doc_lists_every_role_the_template_assigns():
    """Each role id in the Bicep files appears in the doc's role table."""
    doc = DOC.read_text(encoding="utf-8")
    ids = set()
    for path in (ROOT / "infra").rglob("*.bicep"):
        ids |= set(re.findall(r"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'",
                              path.read_text(encoding="utf-8")))
    assert len(ids) >= 10
    for guid in ids:
        assert f"`{guid}`" in doc, guid


def test_doc_names_the_provisioned_parameters():
    """The ownership section names each resource parameter of inference.parameters.json the orchestrator resolves."""
    params = json.loads((ROOT / "infra/provision/inference.parameters.json").read_text(encoding="utf-8"))["parameters"]
    doc = DOC.read_text(encoding="utf-8")
    for name in params:
        if name.endswith("Name"):
            assert f"`{name}`" in doc, name


@pytest.mark.parametrize("output", ["ADAPTERCTL_URL", "ADAPTERS_ACCOUNT_URL"])
def test_adapterctl_environment_comes_from_outputs(output):
    """The doc exports adapterctl's environment from the template's outputs."""
    assert f'export {output}="$(azd env get-value {output})"' in DOC.read_text(encoding="utf-8")
    assert output in bicep_outputs()

#!/usr/bin/env bash
# Runs the built inference image as ACA would (tests/image/test_image_smoke.py), and a rollout on the embedded
# default with apps in containers from it (tests/image/test_container_runtime.py), against INFERENCE_IMAGE
# (lora-inference:cpu, which `make image` builds); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
export INFERENCE_IMAGE="${INFERENCE_IMAGE:-lora-inference:cpu}"
docker image inspect "$INFERENCE_IMAGE" >/dev/null 2>&1 \
    || { echo "run_image_smoke: no image $INFERENCE_IMAGE here: run \`make image\` first" >&2; exit 2; }
exec "${PYTHON:-.venv/bin/python}" -m pytest -p no:cacheprovider -v -s tests/image "$@"

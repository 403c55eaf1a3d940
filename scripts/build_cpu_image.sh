#!/usr/bin/env bash
# Builds the CPU target of inference_image/Dockerfile on this machine with no image registry (`make image`):
#   1. starts dockerd when no engine answers (Debian's docker.io, as root: --iptables=false --bridge=none);
#   2. makes the base image from Debian's packages (debootstrap --variant=minbase, then `docker import`), once:
#      it is cached under its name ($BASE_IMAGE);
#   3. fills a wheelhouse on the host (build/wheelhouse: `pip wheel` of the pinned requirements; torch is the CPU
#      build 2.13.0) and serves it on loopback while the build runs, so pip in the build installs with
#      --no-index from it (PIP_NO_INDEX / PIP_FIND_LINKS build args) and never reaches an index;
#   4. `docker build --network host --target cpu` with BuildKit, tagged $IMAGE and labelled with the digest of the
#      inference_image/ sources (devhost/image.py), which `devhost up --runtime container` checks.
# Prints the time of each step and the image size, and writes them to build/image/timings.txt. Exit status 3: no
# docker engine could be started on this machine (2: not root); anything else that fails is 1.
# Environment: IMAGE (lora-inference:cpu), BASE_IMAGE (lora-base:bookworm), SUITE (bookworm),
# WHEELHOUSE (build/wheelhouse), PYTHON (.venv/bin/python, else python3), WHEEL_PORT (8765), DOCKER_CLIENT.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
IMAGE="${IMAGE:-lora-inference:cpu}"
BASE_IMAGE="${BASE_IMAGE:-lora-base:bookworm}"
SUITE="${SUITE:-bookworm}"
WHEELHOUSE="${WHEELHOUSE:-$root/build/wheelhouse}"
WHEEL_PORT="${WHEEL_PORT:-8765}"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
work="$root/build/image"
mkdir -p "$work" "$WHEELHOUSE"
timings="$work/timings.txt"
: > "$timings"
note() { echo "build_cpu_image: $*" | tee -a "$timings" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
need_root() { [[ "$(id -u)" == "0" ]] || { echo "build_cpu_image: $1 needs root" >&2; exit 2; }; }

# 1. The engine.
if ! docker info >/dev/null 2>&1; then
    need_root "starting dockerd"
    if ! command -v dockerd >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    fi
    nohup dockerd --iptables=false --bridge=none >"$work/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    if ! docker info >/dev/null 2>&1; then  # exit 3: this machine cannot run an engine (told apart from a bad build)
        echo "build_cpu_image: dockerd did not start; its log ($work/dockerd.log) ends:" >&2
        tail -15 "$work/dockerd.log" >&2
        exit 3
    fi
    note "started dockerd (pid $!), log in $work/dockerd.log"
fi

# 2. The base image, from Debian's packages.
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    note "base image $BASE_IMAGE: cached"
else
    need_root "debootstrap"
    command -v debootstrap >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    t=$(now)
    rootfs="$work/rootfs-$SUITE"
    rm -rf "$rootfs"
    debootstrap --variant=minbase "$SUITE" "$rootfs" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    note "base image $BASE_IMAGE: built in $(since "$t") s ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f", $1/1e6}') MB)"
fi

# 3. The wheelhouse: every pinned requirement of the CPU target, as wheels for this Python (3.11, as bookworm's).
t=$(now)
reqs=(-r inference_image/requirements.txt -r inference_image/requirements-ui.txt -r inference_image/requirements-cpu.txt)
"$PYTHON" -m pip wheel -q --disable-pip-version-check -w "$WHEELHOUSE" "${reqs[@]}"
note "wheelhouse $WHEELHOUSE: $(ls "$WHEELHOUSE" | wc -l) wheels, $(du -sm "$WHEELHOUSE" | cut -f1) MB, in $(since "$t") s"

# 4. The image. The wheelhouse is served on loopback only for the build (the build shares the host's network).
"$PYTHON" -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$WHEELHOUSE" >"$work/wheel-server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$WHEEL_PORT/')" 2>/dev/null && break
    sleep 0.1
done
# BuildKit builds only the stages the cpu target needs (the gpu stage comes after it in the Dockerfile, so the classic
# builder would not build it either). A client without buildx cannot use BuildKit: Debian's docker.io client
# (/usr/bin/docker) has it built in, so it is used then.
client="${DOCKER_CLIENT:-docker}"
if ! "$client" buildx version >/dev/null 2>&1 && [[ -z "${DOCKER_CLIENT:-}" ]]; then
    if [[ -x /usr/bin/docker ]] && /usr/bin/docker version >/dev/null 2>&1; then
        client=/usr/bin/docker
    else
        echo "build_cpu_image: this docker client has no BuildKit (install buildx, or set DOCKER_CLIENT)" >&2
        exit 1
    fi
fi
t=$(now)
sources=$(cd "$root" && "$PYTHON" -m devhost.image)  # devhost up --runtime container checks it against the tree
DOCKER_BUILDKIT=1 "$client" build --progress=plain --network host --target cpu \
    --label "org.adapter-deploy.inference-sources=$sources" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/" \
    --build-arg PIP_TRUSTED_HOST=127.0.0.1 \
    -t "$IMAGE" inference_image
note "image $IMAGE: built in $(since "$t") s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1/1e6}') MB"

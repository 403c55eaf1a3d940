#!/usr/bin/env bash
# Runs the inference server and the Gradio chat page side by side: the image's ENTRYPOINT, with the server
# command as its arguments (the image's CMD), e.g. `start.sh python -m inference_server --engine sglang`;
# no arguments runs `$PYTHON -m inference_server`.
# SIGTERM/SIGINT go to both (the server drains); when either exits, the other is stopped. The exit status is the
# server's, or the page's when the page failed first (so the platform restarts the replica).
# Environment: CHAT_PAGE_ENABLED (1; 0 runs the server alone), CHAT_PAGE_PORT (7860), CHAT_PAGE_HOST (0.0.0.0),
# CHAT_PAGE_API_URL (http://127.0.0.1:$INFERENCE_PORT), CHAT_PAGE_API_KEY (default: the first of
# INFERENCE_API_KEYS), CHAT_PAGE_AUTH (optional user:password for the page), PYTHON (python).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"  # both packages live next to this script; cwd stays put
PYTHON="${PYTHON:-python}"

if [[ $# -eq 0 ]]; then
    set -- "$PYTHON" -m inference_server
fi
if [[ "${CHAT_PAGE_ENABLED:-1}" == "0" ]]; then
    exec "$@"
fi

keys="${INFERENCE_API_KEYS:-}"
export CHAT_PAGE_API_KEY="${CHAT_PAGE_API_KEY:-${keys%%,*}}"

"$@" &
server=$!
"$PYTHON" -m chat_page \
    --api-url "${CHAT_PAGE_API_URL:-http://127.0.0.1:${INFERENCE_PORT:-8000}}" \
    --api-key-env CHAT_PAGE_API_KEY \
    --host "${CHAT_PAGE_HOST:-0.0.0.0}" \
    --port "${CHAT_PAGE_PORT:-7860}" &
page=$!

signalled=0
stop_all() { kill -TERM "$server" "$page" 2>/dev/null || true; }
on_signal() { signalled=1; stop_all; }
running() { kill -0 "$1" 2>/dev/null; }
trap on_signal TERM INT

# Poll rather than `wait -n`, which misses a child that exited before it was called.
while [[ "$signalled" == "0" ]] && running "$server" && running "$page"; do
    sleep 1 &
    wait $! || true
done
page_failed=0
if [[ "$signalled" == "0" ]] && running "$server"; then
    page_failed=1
fi
set +e
stop_all
wait "$server"
server_status=$?
while running "$server"; do  # a second signal interrupts `wait`: keep waiting for the drain
    wait "$server"
    server_status=$?
done
wait "$page"
page_status=$?
if [[ "$page_failed" == "1" ]]; then
    echo "start.sh: the chat page exited ($page_status); stopped the server" >&2
    exit $(( page_status == 0 ? 1 : page_status ))
fi
exit "$server_status"

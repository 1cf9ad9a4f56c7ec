#!/usr/bin/env bash
# `make demo`: start `charlm-serve` with the shipped default model in the background, wait until the gRPC
# health service says SERVING, stream a sample through the `charlm` CLI, stop the server (SIGTERM: drain).
# `make demo` installs the server extra into VENV first (no torch).
# Env: VENV (.venv), DEMO_PORT (50051), DEMO_METRICS_PORT (9090), DEMO_PROMPT ("ROMEO:"), DEMO_CHARS (300).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PORT=${DEMO_PORT:-50051}
METRICS_PORT=${DEMO_METRICS_PORT:-9090}
PROMPT=${DEMO_PROMPT:-ROMEO:}
CHARS=${DEMO_CHARS:-300}
TARGET=127.0.0.1:$PORT
LOG=$(mktemp -t charlm-demo.XXXXXX.log)

[ -f models/shakespeare/1/meta.json ] || { echo "demo: models/shakespeare/1 (the shipped model) is missing"; exit 1; }
if "$VENV/bin/charlm" --target "$TARGET" --timeout 2 health >/dev/null 2>&1; then
  echo "demo: a server already answers at $TARGET; stop it or set DEMO_PORT"; exit 1
fi

echo "demo: starting charlm-serve on $TARGET (metrics on :$METRICS_PORT, log in $LOG)"
"$VENV/bin/charlm-serve" --model-repo models --host 127.0.0.1 --port "$PORT" --metrics-port "$METRICS_PORT" \
  >"$LOG" 2>&1 &
server=$!
stop() {
  kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  echo "demo: server stopped"
}
trap stop EXIT

for _ in $(seq 60); do
  kill -0 "$server" 2>/dev/null || { echo "demo: the server exited:"; cat "$LOG"; exit 1; }
  "$VENV/bin/charlm" --target "$TARGET" --timeout 2 health >/dev/null 2>&1 && break
  sleep 0.5
done
"$VENV/bin/charlm" --target "$TARGET" health >/dev/null || { echo "demo: the server is not healthy:"; cat "$LOG"; exit 1; }

echo "demo: healthy; serving:"
"$VENV/bin/charlm" --target "$TARGET" models | sed 's/^/  /'
echo "demo: charlm generate \"$PROMPT\" -n $CHARS -t 0.8"
echo "------------------------------------------------------------------------"
"$VENV/bin/charlm" --target "$TARGET" generate "$PROMPT" -n "$CHARS" -t 0.8 --verbose
echo
echo "------------------------------------------------------------------------"
echo "demo: to keep a server running: $VENV/bin/charlm-serve   (then: $VENV/bin/charlm generate \"$PROMPT\" -n 300)"

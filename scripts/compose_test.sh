#!/usr/bin/env bash
# `make compose-test`: runs docker-compose.yml for real, without a Docker engine, through
# ../shared/tools/compose-podman.sh (rootful podman, host network). Builds the server image, brings the
# stack up with docker-compose.ci.yml, waits for the healthcheck, streams text from the server with the
# host's `charlm` client, checks /metrics, checks the container (non-root, no torch), tears it all down.
# Env: W (podman's work dir, default /tmp/ctr: base images are kept there between runs),
#      VENV (the host virtualenv with the client, default .venv), CHARLM_CI_PORT / CHARLM_CI_METRICS_PORT.
# The train profile instead (one-shot trainer, then `server-trained`; torch comes from PIP_TORCH_ARGS):
#      COMPOSE_TEST_PROFILE=train COMPOSE_TEST_SERVICE=server-trained CHARLM_TRAIN_SECONDS=30 \
#        COMPOSE_TEST_HEALTH_WAIT=180 scripts/compose_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOL=${COMPOSE_PODMAN:-$ROOT/../shared/tools/compose-podman.sh}
export W=${W:-/tmp/ctr}
VENV=${VENV:-.venv}
PORT=${CHARLM_CI_PORT:-55051}
METRICS_PORT=${CHARLM_CI_METRICS_PORT:-59090}
export CHARLM_CI_PORT=$PORT CHARLM_CI_METRICS_PORT=$METRICS_PORT
SERVICE=${COMPOSE_TEST_SERVICE:-server}
PROFILE=${COMPOSE_TEST_PROFILE:-}
PROJECT=charlmci
CONTAINER=${PROJECT}_${SERVICE}_1
LOG=$W/compose-test.log
MERGED=$W/compose-test.yml
START=$(date +%s)

say() { echo "compose-test [$(($(date +%s) - START))s] $*"; }
fail() { say "FAILED: $*"; tail -n 60 "$LOG" | sed 's/^/  | /'; exit 1; }
compose() { bash "$TOOL" "$ROOT" -p "$PROJECT" -f "$MERGED" ${PROFILE:+--profile "$PROFILE"} "$@" >>"$LOG" 2>&1; }
podman_() { CONTAINERS_CONF=$W/containers.conf CONTAINERS_STORAGE_CONF=$W/storage.conf podman "$@"; }

[ -f "$TOOL" ] || { echo "compose-test: $TOOL not found (../shared missing?)"; exit 1; }
[ -x "$VENV/bin/charlm" ] || { echo "compose-test: $VENV/bin/charlm not found: run 'make install' first"; exit 1; }
[ -f models/shakespeare/1/meta.json ] || { echo "compose-test: models/shakespeare/1 (the baked-in model) is missing"; exit 1; }
mkdir -p "$W"; : >"$LOG"

# 1. Podman, docker-compose and the base images (built once into $W), then the merged config. compose 1.29
#    (docker-py) rejects published ports with network_mode: host, and an override cannot remove them,
#    so they are dropped here from the merged config; everything else is the real docker-compose.yml.
say "podman + base images (first run on a machine: ~1-2 min), merging docker-compose.yml + docker-compose.ci.yml"
bash "$TOOL" "$ROOT" -f docker-compose.yml -f docker-compose.ci.yml config >"$MERGED.raw" 2>>"$LOG" \
  || fail "docker-compose config"
/usr/bin/python3 - "$MERGED.raw" "$MERGED" <<'EOF' || fail "dropping ports from the merged config"
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for service in config["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF

teardown() {
  say "tearing down"
  KEEP=0 compose down -v --remove-orphans || say "teardown reported an error (see $LOG)"
  podman_ image prune -f >>"$LOG" 2>&1 || true  # the build stage's untagged image: keeps $W from growing
}
trap teardown EXIT

# 2. Build the image(s) and start $SERVICE with what it depends on (by default `server` alone, no profile).
say "building and starting '$SERVICE'${PROFILE:+ (profile $PROFILE)}"
KEEP=1 compose up -d --build "$SERVICE" || fail "docker-compose up"

# 3. Wait for the healthcheck (the gRPC health service, polled by compose-podman's loop).
say "waiting for the healthcheck"
status=""
for _ in $(seq "${COMPOSE_TEST_HEALTH_WAIT:-120}"); do
  status=$(podman_ inspect --format '{{.State.Health.Status}}' "$CONTAINER" 2>/dev/null || true)
  [ "$status" = healthy ] && break
  [ "$(podman_ inspect --format '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" = false ] && break
  sleep 1
done
[ "$status" = healthy ] || { podman_ logs "$CONTAINER" >>"$LOG" 2>&1 || true; fail "server not healthy (status '$status')"; }
say "healthy"

# 4. The container: an unprivileged user and no torch in the image.
uid=$(podman_ exec "$CONTAINER" id -u)
[ "$uid" != 0 ] || fail "the server runs as root"
podman_ exec "$CONTAINER" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
  || fail "torch is installed in the server image"
say "runs as uid $uid, no torch in the image"

# 5. Stream text with the host's client, then read the metrics it produced.
target=127.0.0.1:$PORT
"$VENV/bin/charlm" --target "$target" health >/dev/null || fail "charlm health"
out=$("$VENV/bin/charlm" --target "$target" generate "ROMEO:" -n 200 --seed 1 --no-echo) || fail "charlm generate"
printf '%s\n' "$out" | sed 's/^/  > /'
[ "${#out}" -ge 150 ] || fail "expected ~200 generated characters, got ${#out}"
metrics=$("$VENV/bin/python" -c "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read().decode())" \
  "http://127.0.0.1:$METRICS_PORT/metrics") || fail "GET /metrics"
grep -Eq '^charlm_chars_generated_total\{model="shakespeare:[0-9]+"\} [1-9]' <<<"$metrics" \
  || fail "/metrics has no charlm_chars_generated_total for shakespeare"
say "generated ${#out} characters; /metrics counts them; served: $("$VENV/bin/charlm" --target "$target" models | tr '\n' ' ')"
say "passed"

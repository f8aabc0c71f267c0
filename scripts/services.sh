#!/usr/bin/env bash
# Make sure the Redis and PostgreSQL the tests use answer; start the local ones if not.
# With CI=true a missing service is an error, never a silent skip.
set -u
redis_up() { python3 - "$1" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
try:
    s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG")
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
pg_up() { pg_isready -q -d "$1" 2>/dev/null; }

REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/15}
TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}

if ! redis_up "$REDIS_URL"; then
  echo "services: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null 2>&1 || true
  for _ in $(seq 50); do redis_up "$REDIS_URL" && break; sleep 0.1; done
fi
if ! pg_up "$TEST_DATABASE_URL"; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql 2>/dev/null | head -n1)" main start >/dev/null 2>&1 || true
  for _ in $(seq 100); do pg_up "$TEST_DATABASE_URL" && break; sleep 0.1; done
fi
# A three-node Redis Cluster on loopback for the cluster tests (REDIS_CLUSTER_URL_TEST), data in a
# temp dir; started once, left running like the Redis above.
CLUSTER_PORTS=${REDIS_CLUSTER_PORTS:-"7001 7002 7003"}
CLUSTER_FIRST=${CLUSTER_PORTS%% *}
cluster_up() { redis-cli -h 127.0.0.1 -p "$CLUSTER_FIRST" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
if ! cluster_up && command -v redis-server >/dev/null 2>&1; then
  echo "services: starting a Redis Cluster on 127.0.0.1 ports $CLUSTER_PORTS"
  CLUSTER_DIR=${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/tollgate-redis-cluster}
  nodes=""
  for port in $CLUSTER_PORTS; do
    if ! redis_up "redis://127.0.0.1:$port"; then
      mkdir -p "$CLUSTER_DIR/$port" && rm -f "$CLUSTER_DIR/$port/nodes.conf"
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
        --cluster-config-file nodes.conf --dir "$CLUSTER_DIR/$port" --save "" --appendonly no \
        --logfile "$CLUSTER_DIR/$port/redis.log" >/dev/null 2>&1 || true
    fi
    for _ in $(seq 50); do redis_up "redis://127.0.0.1:$port" && break; sleep 0.1; done
    nodes="$nodes 127.0.0.1:$port"
  done
  if redis-cli -h 127.0.0.1 -p "$CLUSTER_FIRST" cluster info 2>/dev/null | grep -q '^cluster_slots_assigned:0'; then
    # shellcheck disable=SC2086 - one argument per node
    redis-cli --cluster create $nodes --cluster-replicas 0 --cluster-yes >/dev/null 2>&1 || true
  fi
  for _ in $(seq 100); do cluster_up && break; sleep 0.1; done
fi
if ! command -v nginx >/dev/null 2>&1; then
  echo "services: installing nginx from Debian's packages (deployment tests)"
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d  # do not start it
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light) >/dev/null 2>&1 \
    || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >/dev/null 2>&1 || true
  rm -f /usr/sbin/policy-rc.d
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "services: installing chromium and chromium-driver from Debian's packages (console browser tests)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || true
fi
status=0
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
  || { echo "services: chromium/chromedriver are not installed" >&2; status=1; }
command -v nginx >/dev/null 2>&1 || { echo "services: nginx is not installed" >&2; status=1; }
redis_up "$REDIS_URL" || { echo "services: Redis at $REDIS_URL is not answering" >&2; status=1; }
cluster_up || { echo "services: the Redis Cluster on ports $CLUSTER_PORTS is not answering" >&2; status=1; }
pg_up "$TEST_DATABASE_URL" || { echo "services: PostgreSQL at $TEST_DATABASE_URL is not answering" >&2; status=1; }
if [ "$status" != 0 ] && [ "${CI:-}" = "true" ]; then exit 1; fi
exit 0

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
pg_up "$TEST_DATABASE_URL" || { echo "services: PostgreSQL at $TEST_DATABASE_URL is not answering" >&2; status=1; }
if [ "$status" != 0 ] && [ "${CI:-}" = "true" ]; then exit 1; fi
exit 0

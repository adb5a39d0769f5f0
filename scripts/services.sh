#!/usr/bin/env bash
# Local services without Docker: make sure Redis and PostgreSQL answer (`infra`, for the tests and the production
# stack), and start / stop the background processes (telemetry, the control worker, one pytorch worker, beat; Flower
# by `flower`) with pid files in .run/, on whichever stack the settings resolve to (servers or embedded).
# Never stops by name.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
RUN=.run
mkdir -p "$RUN"

answers() {  # answers redis|postgres: exit 0 when the configured service answers
  "$PY" - "$1" <<'PY'
import sys
from lem_shared.settings import get_settings
s = get_settings()
try:
    if sys.argv[1] == "redis":
        import redis
        redis.Redis.from_url(s.broker_url, socket_connect_timeout=2).ping()
    else:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        url = make_url(s.database_url).set(database="postgres")
        with create_engine(url, connect_args={"connect_timeout": 2}).connect() as c:
            c.execute(text("select 1"))
except Exception as exc:
    print(f"  {sys.argv[1]}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
    sys.exit(1)
PY
}

wait_for() {  # wait_for redis|postgres seconds
  for _ in $(seq 1 "$2"); do answers "$1" 2>/dev/null && return 0; sleep 1; done
  answers "$1"
}

infra() {
  if ! answers redis 2>/dev/null; then
    if command -v redis-server >/dev/null; then
      echo "starting Redis"
      mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
      wait_for redis 15 || { echo "Redis did not come up" >&2; exit 1; }
    else
      echo "Redis does not answer at LEM_BROKER_URL and redis-server is not installed." >&2
      echo "Install it (apt-get install redis-server) or point LEM_BROKER_URL at a running Redis." >&2
      exit 1
    fi
  fi
  if ! answers postgres 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
      echo "starting PostgreSQL"
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
      wait_for postgres 30 || { echo "PostgreSQL did not come up" >&2; exit 1; }
    else
      echo "PostgreSQL does not answer at LEM_DATABASE_URL and no local cluster is installed." >&2
      echo "Install it (apt-get install postgresql) or point LEM_DATABASE_URL at a running server." >&2
      exit 1
    fi
  fi
  echo "Redis and PostgreSQL answer"
}

browser() {  # Debian's headless Chromium, which the report test renders with (installed when missing)
  if command -v chromium >/dev/null; then echo "chromium: $(command -v chromium)"; return; fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian's chromium (the HTML report test renders its page with it)"
  $sudo apt-get install -y -q chromium >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }
  command -v chromium >/dev/null || { echo "chromium could not be installed: apt-get install chromium" >&2; exit 1; }
}

alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() {  # start NAME COMMAND...
  local name=$1; shift
  if alive "$name"; then echo "$name already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  setsid "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
  echo "started $name (pid $!, log $RUN/$name.log)"
}

supervise() {  # supervise NAME COMMAND...: run COMMAND, start it again whenever it exits; TERM stops both
  local name=$1 child="" stopping=""; shift
  trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
  while [ -z "$stopping" ]; do
    "$@" & child=$!
    rc=0; wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done  # a trapped TERM ends wait early
    child=""
    [ -n "$stopping" ] && break
    echo "supervise: $name exited with status $rc; starting it again in ${LEM_RESTART_DELAY_S:-5} s" >&2
    sleep "${LEM_RESTART_DELAY_S:-5}" & wait $! || true
  done
}

stack() {  # export the stack's URLs as resolved now (servers or embedded), so every process started here agrees
  local lines
  lines=$("$PY" - <<'PY'
import shlex
from lem_shared.settings import get_settings, is_redis
s = get_settings()
print(f"export LEM_BROKER_URL={shlex.quote(s.broker_url)} LEM_DATABASE_URL={shlex.quote(s.database_url)}")
if s.result_backend:
    print(f"export LEM_RESULT_BACKEND={shlex.quote(s.result_backend)}")
print("redis" if is_redis(s.broker_url) else "embedded")
PY
) || exit 1
  eval "$(grep '^export ' <<<"$lines")"
  if [[ $(tail -n1 <<<"$lines") == redis ]] && ! answers redis 2>/dev/null; then
    echo "the broker named by LEM_BROKER_URL does not answer; start it (\`make services\` starts a local Redis)" >&2
    exit 1
  fi
}

up() {
  stack
  start telemetry "$VENV/bin/lem-telemetry"
  start control "$0" supervise control "$VENV/bin/lem-control"  # restarted if it ever exits
  # One torch thread unless the user chose (README: make campaign): on a shared small CPU a thread per core
  # makes every batch wait on the busiest core, and warm-up never settles.
  local threads=${LEM_TORCH_THREADS:-}
  [ -z "$threads" ] && ! grep -qs '^LEM_TORCH_THREADS=' .env && threads=1
  start worker-pytorch env ${threads:+LEM_TORCH_THREADS=$threads} "$VENV/bin/lem-worker-pytorch"
  start beat "$VENV/bin/lem-beat"
  echo -n "waiting for workers to answer ping"
  for _ in $(seq 1 90); do
    replies=$("$VENV/bin/celery" -A lem_planner.control:app inspect ping --timeout 1 2>/dev/null || true)
    if [[ $replies == *"pytorch@"* && $replies == *"control@"* ]]; then
      echo " ok"; return 0
    fi
    for n in telemetry control worker-pytorch beat; do
      alive "$n" || { echo; echo "$n exited; its log:" >&2; tail -n 30 "$RUN/$n.log" >&2; exit 1; }
    done
    echo -n "."; sleep 1
  done
  echo; echo "workers did not answer ping within 90 s; see $RUN/*.log" >&2; exit 1
}

flower() {  # Flower on http://127.0.0.1:5555 in the background (log .run/flower.log); `down` stops it
  start flower "$VENV/bin/lem-flower" --address=127.0.0.1 --port=5555
  for _ in $(seq 1 30); do
    "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:5555/healthcheck', timeout=1)" 2>/dev/null \
      && { grep '^lem-flower:' "$RUN/flower.log" >&2 || true; echo "flower answers on http://127.0.0.1:5555"; return 0; }
    alive flower || { echo "flower exited; its log:" >&2; tail -n 30 "$RUN/flower.log" >&2; exit 1; }
    sleep 1
  done
  echo "flower did not answer on http://127.0.0.1:5555/healthcheck within 30 s; see $RUN/flower.log" >&2; exit 1
}

down() {
  for name in beat worker-pytorch control telemetry flower; do
    if alive "$name"; then
      pid=$(cat "$RUN/$name.pid")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && { echo "$name did not stop in 30 s: killing"; kill -KILL -- -"$pid" 2>/dev/null || kill -KILL "$pid"; }
      echo "stopped $name"
    fi
    rm -f "$RUN/$name.pid"
  done
}

status() {
  for name in telemetry control worker-pytorch beat flower; do
    if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

command=${1:?usage: services.sh infra|browser|up|flower|down|status}
shift
"$command" "$@"

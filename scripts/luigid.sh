#!/usr/bin/env bash
# Start, stop or check the Luigi central scheduler (luigid) that the pipeline reports to.
#   scripts/luigid.sh start|stop|status [PORT]
# It runs from the project folder with the package's defaults (tasks/luigi.cfg) under this
# folder's luigi.cfg, so it reads their [scheduler] and [resources]
# ([resources] fetch_slots caps the category downloads of every worker and machine using it).
# State and logs live in .luigid/.  It listens on loopback only, because its UI has no
# login; to serve workers on other machines, bind it to a private address with
# LUIGID_ADDRESS=10.0.0.5 (never a public one), or reach it through an SSH tunnel.
# Environment: LUIGID_PORT (default 8082), LUIGID_ADDRESS (default 127.0.0.1),
# LUIGID_DIR (state, logs and pid file; default .luigid).
set -euo pipefail
cd "$(dirname "$0")/.."
port="${2:-${LUIGID_PORT:-8082}}"
address="${LUIGID_ADDRESS:-127.0.0.1}"
dir="${LUIGID_DIR:-.luigid}"
pidfile="$dir/luigid.pid"
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
"$python" -c "import luigi, tasks" 2> /dev/null || {
  echo "luigi or the sampler is not installed: run ./quickstart once, or: python3 -m venv .venv && .venv/bin/pip install -e ." >&2
  exit 1
}
host="$address"
case "$host" in 0.0.0.0 | "") host=127.0.0.1 ;; ::) host="::1" ;; esac
case "$host" in *:*) url_host="[$host]" ;; *) url_host="$host" ;; esac
url="http://$url_host:$port"

# "luigid" if a luigid answers at $url, "other" if something else does, "none" if nothing.
probe() {
  "$python" - "$url" <<'PY' 2>/dev/null || echo none
import json, sys, urllib.request
# No proxy: HTTP_PROXY must not send a loopback health check elsewhere.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1] + "/api/resource_list", timeout=2) as answer:
        print("luigid" if "response" in json.load(answer) else "other")
except OSError as error:
    print("other" if getattr(error, "code", None) else "none")
except ValueError:
    print("other")
PY
}

# Whether process $1 runs (a zombie, exited but not yet reaped, does not).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]
}

# The pid in the pid file, if that process is alive and is a luigid.
running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(tr -dc 0-9 < "$pidfile")"
  [ -n "$pid" ] && alive "$pid" || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q luigid || return 1
  fi
  echo "$pid"
}

case "${1:-status}" in
  start)
    case "$(probe)" in
      luigid) echo "luigid already answers at $url (stop it with scripts/luigid.sh stop)"; exit 0 ;;
      other) echo "something that is not luigid answers at $url; choose another port: scripts/luigid.sh start PORT" >&2; exit 1 ;;
    esac
    if pid="$(running_pid)"; then
      echo "the luigid started from here (pid $pid) does not answer at $url (another port?);" \
        "stop it first (scripts/luigid.sh stop) or give this one its own LUIGID_DIR" >&2
      exit 1
    fi
    rm -f "$pidfile"
    mkdir -p "$dir/logs"
    case "$address" in
      127.* | localhost | ::1) ;;
      *) echo "warning: luigid will listen on $address; its UI and API have no login, keep it off public networks" >&2 ;;
    esac
    # luigid with the package's defaults ([scheduler], [resources]) under this folder's luigi.cfg.
    "$python" -c 'import sys, tasks; from luigi.cmdline import luigid; luigid(sys.argv[1:])' --background --address "$address" --port "$port" --pidfile "$pidfile" \
      --logdir "$dir/logs" --state-path "$dir/state.pickle"
    for _ in $(seq 100); do [ "$(probe)" = luigid ] && break; sleep 0.1; done
    if [ "$(probe)" != luigid ]; then
      echo "luigid did not start; see $dir/logs:" >&2
      tail -n 20 "$dir"/logs/*.err "$dir/logs/luigi-server.log" 2>/dev/null >&2 || true
      exit 1
    fi
    echo "luigid started (pid $(cat "$pidfile")): UI at $url (stop it with scripts/luigid.sh stop)"
    ;;
  stop)
    if ! pid="$(running_pid)"; then
      rm -f "$pidfile"
      if [ "$(probe)" = luigid ]; then
        echo "the luigid at $url was not started by scripts/luigid.sh from here; stop it where it was started"
      else
        echo "no luigid started from here is running"
      fi
      exit 0
    fi
    kill "$pid"  # SIGTERM: luigid saves its state to $dir/state.pickle on the way out
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      echo "luigid (pid $pid) is still shutting down" >&2
      exit 1
    fi
    rm -f "$pidfile"
    echo "luigid stopped (pid $pid); its state is in $dir/state.pickle"
    ;;
  status)
    case "$(probe)" in
      luigid)
        if pid="$(running_pid)"; then
          echo "luigid answers at $url (pid $pid, started from here; stop it with scripts/luigid.sh stop)"
        else
          echo "luigid answers at $url (not started from here)"
        fi
        ;;
      other) echo "something that is not luigid answers at $url"; exit 1 ;;
      *) echo "no luigid at $url"; exit 1 ;;
    esac
    ;;
  *) echo "usage: $0 start|stop|status [PORT]" >&2; exit 2 ;;
esac

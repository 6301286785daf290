#!/usr/bin/env bash
# Start, stop or check the Luigi central scheduler (luigid) that the pipeline reports to.
# State and logs live in .luigid/ in the project folder; it listens on loopback only,
# because its UI has no login.  Usage: scripts/luigid.sh start|stop|status [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
port="${2:-${LUIGID_PORT:-8082}}"
dir=.luigid
luigid_bin=luigid
[ -x .venv/bin/luigid ] && luigid_bin=.venv/bin/luigid

answers() { python3 -c "import sys,urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/', timeout=2)" 2>/dev/null; }

case "${1:-status}" in
  start)
    if answers; then echo "luigid already answers on http://127.0.0.1:$port"; exit 0; fi
    mkdir -p "$dir/logs"
    # Started from the project folder, luigid reads luigi.cfg's [scheduler] settings.
    "$luigid_bin" --background --address 127.0.0.1 --port "$port" --pidfile "$dir/luigid.pid" \
      --logdir "$dir/logs" --state-path "$dir/state.pickle"
    for _ in $(seq 50); do answers && break; sleep 0.2; done
    answers || { echo "luigid did not start; see $dir/logs" >&2; exit 1; }
    echo "luigid started: UI at http://127.0.0.1:$port (stop it with scripts/luigid.sh stop)"
    ;;
  stop)
    if [ -f "$dir/luigid.pid" ] && kill "$(cat "$dir/luigid.pid")" 2>/dev/null; then
      rm -f "$dir/luigid.pid"; echo "luigid stopped"
    else
      echo "no luigid started from here is running"
    fi
    ;;
  status)
    if answers; then echo "luigid answers on http://127.0.0.1:$port"; else echo "no luigid on port $port"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status [PORT]" >&2; exit 2 ;;
esac

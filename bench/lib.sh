# Shared by bench/react.sh and bench/search.sh (sourced, not run): a throw-away directory
# cleaned up on exit, one `nanachat serve` at a time on a free port, and a throw-away
# PostgreSQL on loopback. Needs $nanachat (the binary under test) set by the caller.

tmp=$(mktemp -d)
pg_bin=; as_pg=(); server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ -n "$pg_bin" ]; then
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/pg" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# serve ARGS...: one server on a free port; sets url and server.
serve() {
  "$nanachat" serve --addr 127.0.0.1:0 --rate 1000000 --burst 1000000 \
    --max-connections-per-ip 0 --connect-rate-per-ip 0 --heartbeat 0 "$@" 2>"$tmp/serve.log" &
  server=$!
  for _ in $(seq 400); do grep -qs "listening on" "$tmp/serve.log" && break; sleep 0.05; done
  grep -q 'listening on' "$tmp/serve.log" || { cat "$tmp/serve.log" >&2; exit 1; }
  url=ws://127.0.0.1:$(grep -oE 'listening on ws://127\.0\.0\.1:[0-9]+' "$tmp/serve.log" | head -n1 | grep -oE '[0-9]+$')
}
stop() { kill "$server"; wait "$server" 2>/dev/null || true; server=; }

# start_postgres [SETTING...]: a PostgreSQL of Debian's (scripts/setup-services) in $tmp/pg on
# a free loopback port, each SETTING passed as `-c SETTING`; sets pg to its URL.
start_postgres() {
  scripts/setup-services
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  if [ "$(id -u)" = 0 ]; then chown postgres "$tmp"; as_pg=(runuser -u postgres --); fi
  local port settings=""
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  for setting in "$@"; do settings+=" -c $setting"; done
  "${as_pg[@]}" "$pg_bin/initdb" -A trust -U nanachat -E UTF8 --no-sync -D "$tmp/pg" >/dev/null
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w start \
    -o "-p $port -k $tmp -c listen_addresses=127.0.0.1$settings" >/dev/null
  pg=postgres://nanachat@127.0.0.1:$port/postgres
}

#!/usr/bin/env bash
# A local clusterchat cluster on loopback: a private Redis, a fresh database on the local
# MariaDB (or PostgreSQL with --pg), N replicas and nginx in front of them.
#
#   nginx/cluster.sh up [N] [--pg] [--release] [--port P] [--legacy [--legacy-port L]]
#                                                            start (N = 2 replicas, nginx on 8000;
#                                                            --legacy: each replica also gets a
#                                                            --legacy-listen port and nginx stream
#                                                            balances them on L, default 6000)
#   nginx/cluster.sh status                                  what runs, and the URLs
#   nginx/cluster.sh kill I                                  SIGKILL replica I (failure drills)
#   nginx/cluster.sh restart I                               stop replica I (SIGTERM) and start it
#                                                            again on the same port and database
#   nginx/cluster.sh down                                    stop exactly what `up` started
#
# Environment:
#   CHAT_CLUSTER_DIR   run folder for logs, PIDs and state (default: <repo>/run/cluster)
#   CHAT_BIN           chat-server binary to run (default: built with cargo)
#   CHAT_MYSQL_URL     admin URL of MariaDB/MySQL   (default: mysql://root@127.0.0.1:3306)
#   CHAT_POSTGRES_URL  admin URL of PostgreSQL      (default: postgres://postgres@127.0.0.1:5432)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
run=${CHAT_CLUSTER_DIR:-$repo/run/cluster}
state=$run/state

die() { echo "cluster.sh: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# url_part URL FIELD: host, port, user, password or path of a database URL.
url_part() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print({"host": u.hostname or "127.0.0.1", "port": u.port or "", "user": u.username or "",
       "password": u.password or "", "path": u.path.lstrip("/")}[sys.argv[2]])
PY
}

wait_http() {
    local url=$1 tries=${2:-150}
    for _ in $(seq "$tries"); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

stop_pid() {
    local pid=$1
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

db_create() {
    local kind=$1 admin=$2 name=$3
    if [ "$kind" = postgres ]; then
        psql -q -h "$(url_part "$admin" host)" -p "$(url_part "$admin" port)" -U "$(url_part "$admin" user)" \
            -d postgres -c "CREATE DATABASE $name" >/dev/null
    else
        MYSQL_PWD=$(url_part "$admin" password) mysql -h "$(url_part "$admin" host)" -P "$(url_part "$admin" port)" \
            -u "$(url_part "$admin" user)" -e "CREATE DATABASE $name CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    fi
}

db_drop() {
    local kind=$1 admin=$2 name=$3
    if [ "$kind" = postgres ]; then
        psql -q -h "$(url_part "$admin" host)" -p "$(url_part "$admin" port)" -U "$(url_part "$admin" user)" \
            -d postgres -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null 2>&1 || true
    else
        MYSQL_PWD=$(url_part "$admin" password) mysql -h "$(url_part "$admin" host)" -P "$(url_part "$admin" port)" \
            -u "$(url_part "$admin" user)" -e "DROP DATABASE IF EXISTS $name" 2>/dev/null || true
    fi
}

cmd_up() {
    local replicas=2 kind=mysql profile=debug nginx_port=8000 legacy=0 legacy_port=6000
    while [ $# -gt 0 ]; do
        case $1 in
            --pg) kind=postgres ;;
            --release) profile=release ;;
            --port) nginx_port=$2; shift ;;
            --legacy) legacy=1 ;;
            --legacy-port) legacy=1; legacy_port=$2; shift ;;
            [0-9]*) replicas=$1 ;;
            *) die "unknown argument $1" ;;
        esac
        shift
    done
    if [ -f "$state" ]; then
        die "a cluster is already up (state in $state); run '$0 down' first"
    fi
    command -v nginx >/dev/null || die "nginx is not installed (apt-get install -y nginx)"
    command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install -y redis-server)"

    local bin=${CHAT_BIN:-}
    if [ -z "$bin" ]; then
        local flag=()
        [ "$profile" = release ] && flag=(--release)
        (cd "$repo" && cargo build -q "${flag[@]}" --bin chat-server) || die "cargo build failed"
        bin=$repo/target/$profile/chat-server
    fi
    [ -x "$bin" ] || die "no binary at $bin"

    mkdir -p "$run"
    : > "$state"
    trap 'echo "cluster.sh: start failed; stopping what was started" >&2; cmd_down >/dev/null 2>&1 || true' ERR

    # Redis, private to this cluster.
    local redis_port
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --pidfile "$run/redis.pid" --logfile "$run/redis.log" --dir "$run" >/dev/null
    for _ in $(seq 50); do [ -s "$run/redis.pid" ] && break; sleep 0.1; done
    echo "REDIS_PID=$(cat "$run/redis.pid")" >> "$state"
    echo "REDIS_PORT=$redis_port" >> "$state"
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

    # A fresh database.
    local admin name url
    if [ "$kind" = postgres ]; then
        admin=${CHAT_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
    else
        admin=${CHAT_MYSQL_URL:-mysql://root@127.0.0.1:3306}
    fi
    name=chat_cluster_$(date +%s)_$$
    db_create "$kind" "$admin" "$name"
    echo "DB_KIND=$kind" >> "$state"
    echo "DB_ADMIN=$admin" >> "$state"
    echo "DB_NAME=$name" >> "$state"
    url=${admin%/}/$name
    echo "DB_URL=$url" >> "$state"
    echo "BIN=$bin" >> "$state"

    # Replicas: the first one alone (it creates the schema), then the others.
    local i port ports=() lport legacy_ports=() legacy_args=()
    for i in $(seq "$replicas"); do
        port=$(free_port)
        legacy_args=()
        if [ "$legacy" = 1 ]; then
            lport=$(free_port)
            legacy_args=(--legacy-listen "127.0.0.1:$lport")
            legacy_ports+=("$lport")
        fi
        : > "$run/replica-$i.log"
        start_replica "$bin" "$url" "$redis_port" "$i" "$port" "${legacy_args[@]}"
        echo "REPLICA_${i}_PID=$!" >> "$state"
        echo "REPLICA_${i}_PORT=$port" >> "$state"
        if [ "$legacy" = 1 ]; then echo "REPLICA_${i}_LEGACY_PORT=$lport" >> "$state"; fi
        ports+=("$port")
        if [ "$i" = 1 ]; then
            wait_http "http://127.0.0.1:$port/healthz" 600 || die "replica 1 did not start; see $run/replica-1.log"
        fi
    done
    for i in $(seq "$replicas"); do
        wait_http "http://127.0.0.1:${ports[$((i - 1))]}/healthz" || die "replica $i did not start; see $run/replica-$i.log"
    done
    echo "REPLICAS=$replicas" >> "$state"

    # nginx, with this cluster's ports written into a copy of chat.conf.
    mkdir -p "$run/nginx/temp"
    chmod 777 "$run/nginx/temp"
    python3 - "$here/chat.conf" "$run/nginx/chat.conf" "$nginx_port" "${ports[@]}" <<'PY'
import re, sys
src, dst, listen, *ports = sys.argv[1:]
conf = open(src).read()
servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in ports)
conf = re.sub(r"(# replicas: begin\n).*?(\s*# replicas: end)", lambda m: m.group(1) + servers.rstrip("\n") + m.group(2), conf, flags=re.S)
conf = conf.replace("listen 127.0.0.1:8000;", f"listen 127.0.0.1:{listen};")
open(dst, "w").write(conf)
PY
    nginx -p "$run/nginx" -c "$run/nginx/chat.conf" > "$run/nginx.log" 2>&1 &
    echo "NGINX_PID=$!" >> "$state"
    echo "NGINX_PORT=$nginx_port" >> "$state"
    wait_http "http://127.0.0.1:$nginx_port/healthz" || die "nginx did not start; see $run/nginx/error.log"
    if [ "$legacy" = 1 ]; then start_stream "$legacy_port" "${legacy_ports[@]}"; fi
    trap - ERR
    cmd_status
}

# start_replica BIN DB_URL REDIS_PORT I PORT [LEGACY ARGS...]: replica I in the background ($!).
start_replica() {
    local bin=$1 url=$2 redis_port=$3 i=$4 port=$5
    shift 5
    "$bin" --listen "127.0.0.1:$port" --database-url "$url" --redis-url "redis://127.0.0.1:$redis_port" \
        --node-id "replica-$i" --web-dir "$repo/web" "$@" >> "$run/replica-$i.log" 2>&1 &
}

# start_stream PORT LEGACY_PORT...: nginx stream (a copy of stream.conf) in front of the replicas'
# legacy listeners, for the course's original TCP client.
start_stream() {
    local listen=$1; shift
    local module=""
    if nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
        local dir
        dir=$(nginx -V 2>&1 | tr ' ' '\n' | sed -n 's/^--modules-path=//p')
        module=${dir:-/usr/lib/nginx/modules}/ngx_stream_module.so
        [ -f "$module" ] || die "nginx's stream module is missing (apt-get install -y libnginx-mod-stream)"
    fi
    mkdir -p "$run/nginx-stream"
    python3 - "$here/stream.conf" "$run/nginx-stream/stream.conf" "$listen" "$module" "$@" <<'PY'
import re, sys
src, dst, listen, module, *ports = sys.argv[1:]
conf = open(src).read()
servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in ports)
conf = re.sub(r"(# replicas: begin\n).*?(\s*# replicas: end)", lambda m: m.group(1) + servers.rstrip("\n") + m.group(2), conf, flags=re.S)
conf = conf.replace("listen 127.0.0.1:6000 ", f"listen 127.0.0.1:{listen} ")
if module:
    conf = f"load_module {module};\n" + conf
open(dst, "w").write(conf)
PY
    nginx -p "$run/nginx-stream" -c "$run/nginx-stream/stream.conf" > "$run/nginx-stream.log" 2>&1 &
    echo "NGINX_STREAM_PID=$!" >> "$state"
    echo "LEGACY_PORT=$listen" >> "$state"
    for _ in $(seq 50); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$listen" \
            2>/dev/null && return 0
        sleep 0.1
    done
    die "nginx stream did not start; see $run/nginx-stream/error-stream.log"
}

load_state() {
    [ -f "$state" ] || die "no cluster is up (no $state)"
    # shellcheck disable=SC1090
    . "$state"
}

cmd_status() {
    load_state
    local i pid port
    printf 'redis    pid %-8s %s  redis://127.0.0.1:%s\n' "$REDIS_PID" "$(alive "$REDIS_PID" && echo up || echo DOWN)" "$REDIS_PORT"
    printf 'database %s %s\n' "$DB_KIND" "$DB_NAME"
    for i in $(seq "${REPLICAS:-0}"); do
        pid=$(eval echo "\${REPLICA_${i}_PID}")
        port=$(eval echo "\${REPLICA_${i}_PORT}")
        printf 'replica-%s pid %-8s %s  http://127.0.0.1:%s  (log %s)\n' "$i" "$pid" \
            "$(alive "$pid" && echo up || echo DOWN)" "$port" "$run/replica-$i.log"
        port=$(eval echo "\${REPLICA_${i}_LEGACY_PORT:-}")
        if [ -n "$port" ]; then printf '          legacy TCP 127.0.0.1:%s\n' "$port"; fi
    done
    if [ -n "${NGINX_PID:-}" ]; then
        printf 'nginx    pid %-8s %s\n' "$NGINX_PID" "$(alive "$NGINX_PID" && echo up || echo DOWN)"
        echo
        echo "web page:  http://127.0.0.1:$NGINX_PORT/"
        echo "websocket: ws://127.0.0.1:$NGINX_PORT/ws"
    fi
    if [ -n "${NGINX_STREAM_PID:-}" ]; then
        printf 'nginx stream pid %-8s %s\n' "$NGINX_STREAM_PID" "$(alive "$NGINX_STREAM_PID" && echo up || echo DOWN)"
        echo "original client: ./ChatClient 127.0.0.1 $LEGACY_PORT   (docs/legacy.md)"
    fi
}

cmd_restart() {
    load_state
    local i=${1:?replica number}
    local pid port lport legacy_args=()
    pid=$(eval echo "\${REPLICA_${i}_PID:-}")
    port=$(eval echo "\${REPLICA_${i}_PORT:-}")
    lport=$(eval echo "\${REPLICA_${i}_LEGACY_PORT:-}")
    [ -n "$port" ] || die "no replica $i"
    [ -n "$lport" ] && legacy_args=(--legacy-listen "127.0.0.1:$lport")
    stop_pid "$pid"
    start_replica "$BIN" "$DB_URL" "$REDIS_PORT" "$i" "$port" "${legacy_args[@]}"
    sed -i "s/^REPLICA_${i}_PID=.*/REPLICA_${i}_PID=$!/" "$state"
    wait_http "http://127.0.0.1:$port/healthz" || die "replica $i did not start; see $run/replica-$i.log"
    echo "replica-$i restarted (pid $!)"
}

cmd_kill() {
    load_state
    local i=${1:?replica number}
    local pid
    pid=$(eval echo "\${REPLICA_${i}_PID:-}")
    [ -n "$pid" ] || die "no replica $i"
    kill -KILL "$pid" 2>/dev/null || true
    echo "replica-$i (pid $pid) killed"
}

cmd_down() {
    [ -f "$state" ] || { echo "no cluster is up"; return 0; }
    # shellcheck disable=SC1090
    . "$state"
    local i
    [ -n "${NGINX_PID:-}" ] && stop_pid "$NGINX_PID"
    [ -n "${NGINX_STREAM_PID:-}" ] && stop_pid "$NGINX_STREAM_PID"
    for i in $(seq 1 64); do
        local pid
        pid=$(eval echo "\${REPLICA_${i}_PID:-}")
        [ -n "$pid" ] && stop_pid "$pid"
    done
    [ -n "${REDIS_PID:-}" ] && stop_pid "$REDIS_PID"
    [ -n "${DB_NAME:-}" ] && db_drop "$DB_KIND" "$DB_ADMIN" "$DB_NAME"
    rm -f "$state" "$run/redis.pid"
    echo "cluster stopped (logs kept in $run)"
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kill) shift; cmd_kill "$@" ;;
    restart) shift; cmd_restart "$@" ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac

#!/usr/bin/env bash
# The project's one test command: makes sure Redis, MariaDB and PostgreSQL are there and
# answering, then runs every test of the workspace.
#
#   ./scripts/test.sh              # everything
#   ./scripts/test.sh -- sqlite::  # extra arguments go to `cargo test --workspace`
#
# On a fresh Debian machine it installs what is missing (apt-get) and starts the services the way
# the machine does. When a service cannot be used as the tests expect (root over TCP without a
# password for MariaDB, user postgres without a password for PostgreSQL), it starts a private
# instance on a free port under a temporary directory instead, exports CHAT_TEST_MYSQL_URL /
# CHAT_TEST_POSTGRES_URL / CHAT_TEST_REDIS_URL for the tests, and stops it again at exit.
# URLs already set in the environment are used as they are; CHAT_TEST_PRIVATE_SERVICES=1 skips
# the system services and always starts private instances.
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- 1. Install what is missing -------------------------------------------------------------

pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && echo "$dir"
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null || missing+=(mariadb-server)
if ! command -v psql >/dev/null || [ -z "$(pg_bindir)" ]; then missing+=(postgresql); fi
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v chromium >/dev/null || missing+=(chromium)
# nginx's stream module (TCP balancing of the legacy port) is a separate package on Debian.
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
command -v tmux >/dev/null || missing+=(tmux)        # the terminal client's end-to-end test
command -v curl >/dev/null || missing+=(curl)        # nginx/cluster.sh health checks
command -v python3 >/dev/null || missing+=(python3)  # nginx/cluster.sh helpers
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- 2. Helpers -----------------------------------------------------------------------------

TMP_ROOT=""
cleanups=()
cleanup() {
    local i
    for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do
        eval "${cleanups[$i]}" >/dev/null 2>&1 || true
    done
    if [ -n "$TMP_ROOT" ]; then rm -rf "$TMP_ROOT"; fi
}
trap cleanup EXIT

system_services() { [ "${CHAT_TEST_PRIVATE_SERVICES:-0}" != 1 ]; }

# Creates the temporary directory for private instances (once; not in a subshell).
make_tmp_root() {
    if [ -z "$TMP_ROOT" ]; then
        TMP_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/clusterchat-test.XXXXXX")
        chmod 755 "$TMP_ROOT" # the postgres user must reach its data directory
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 30000))
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND until it succeeds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq 1 $((seconds * 4))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    log "$what did not come up within ${seconds}s"
    return 1
}

# --- 3. Redis -------------------------------------------------------------------------------

redis_ok() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]; }

if [ -z "${CHAT_TEST_REDIS_URL:-}" ]; then
    if system_services && ! redis_ok 6379 && ! port_in_use 6379; then
        log "starting redis-server on 127.0.0.1:6379"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            >/dev/null || true
        wait_for 20 "Redis on 6379" redis_ok 6379 || true
    fi
    if system_services && redis_ok 6379; then
        export CHAT_TEST_REDIS_URL="redis://127.0.0.1:6379"
    else
        port=$(free_port)
        make_tmp_root
        dir="$TMP_ROOT/redis"
        mkdir -p "$dir"
        log "starting a private Redis on 127.0.0.1:$port"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" \
            --appendonly no --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
        cleanups+=("redis-cli -h 127.0.0.1 -p $port shutdown nosave")
        wait_for 30 "private Redis" redis_ok "$port" || die "cannot start Redis"
        export CHAT_TEST_REDIS_URL="redis://127.0.0.1:$port"
    fi
fi

# --- 4. MariaDB -----------------------------------------------------------------------------

mysql_answers() { mysqladmin --protocol=tcp -h 127.0.0.1 -P "$1" -u root --connect-timeout=2 ping; }
mysql_usable() {
    mysql --protocol=tcp -h 127.0.0.1 -P "$1" -u root --connect-timeout=2 -e 'SELECT 1'
}

if [ -z "${CHAT_TEST_MYSQL_URL:-}" ]; then
    if system_services && ! mysql_usable 3306 >/dev/null 2>&1 && ! port_in_use 3306; then
        log "starting the system MariaDB"
        as_root install -d -o mysql -g mysql /run/mysqld 2>/dev/null || true
        as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
            -- --user=mysql || true
        wait_for 60 "MariaDB on 3306" mysql_answers 3306 || true
    fi
    if system_services && mysql_usable 3306 >/dev/null 2>&1; then
        export CHAT_TEST_MYSQL_URL="mysql://root@127.0.0.1:3306"
    else
        port=$(free_port)
        make_tmp_root
        dir="$TMP_ROOT/mariadb"
        mkdir -p "$dir"
        log "starting a private MariaDB on 127.0.0.1:$port"
        user_args=()
        [ "$(id -u)" -eq 0 ] && user_args=(--user=root)
        mariadb-install-db --no-defaults --datadir="$dir/data" "${user_args[@]}" \
            --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 \
            || { cat "$dir/install.log" >&2; die "mariadb-install-db failed"; }
        mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/mysqld.sock" \
            --pid-file="$dir/mysqld.pid" --port="$port" --bind-address=127.0.0.1 \
            --skip-name-resolve --character-set-server=utf8mb4 "${user_args[@]}" \
            >"$dir/mariadbd.log" 2>&1 &
        cleanups+=("kill $! && wait $!")
        wait_for 60 "private MariaDB" mysql_usable "$port" \
            || { tail -n 30 "$dir/mariadbd.log" >&2; die "cannot start MariaDB"; }
        export CHAT_TEST_MYSQL_URL="mysql://root@127.0.0.1:$port"
    fi
fi

# --- 5. PostgreSQL --------------------------------------------------------------------------

pg_answers() { pg_isready -h 127.0.0.1 -p "$1" -t 2; }
pg_usable() { psql -h 127.0.0.1 -p "$1" -U postgres -w -d postgres -Atc 'SELECT 1'; }

if [ -z "${CHAT_TEST_POSTGRES_URL:-}" ]; then
    if system_services && ! pg_usable 5432 >/dev/null 2>&1 && ! port_in_use 5432 \
        && [ -d /etc/postgresql ]; then
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        if [ -n "$version" ]; then
            log "starting the system PostgreSQL $version"
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
            wait_for 60 "PostgreSQL on 5432" pg_answers 5432 || true
        fi
    fi
    if system_services && pg_usable 5432 >/dev/null 2>&1; then
        export CHAT_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432"
    else
        port=$(free_port)
        make_tmp_root
        dir="$TMP_ROOT/postgres"
        bindir=$(pg_bindir) || die "no PostgreSQL server binaries under /usr/lib/postgresql"
        log "starting a private PostgreSQL on 127.0.0.1:$port"
        run_pg=()
        if [ "$(id -u)" -eq 0 ]; then
            run_pg=(runuser -u postgres --)
            install -d -o postgres -m 700 "$dir"
        else
            mkdir -p -m 700 "$dir"
        fi
        "${run_pg[@]}" "$bindir/initdb" -A trust -U postgres -E UTF8 -D "$dir/data" \
            >"$dir.initdb.log" 2>&1 || { cat "$dir.initdb.log" >&2; die "initdb failed"; }
        "${run_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
            || { cat "$dir/server.log" >&2; die "cannot start PostgreSQL"; }
        cleanups+=("${run_pg[*]} $bindir/pg_ctl -D $dir/data -m fast -w stop")
        wait_for 60 "private PostgreSQL" pg_usable "$port" || die "cannot use PostgreSQL"
        export CHAT_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port"
    fi
fi

log "Redis: $CHAT_TEST_REDIS_URL  MariaDB: $CHAT_TEST_MYSQL_URL  PostgreSQL: $CHAT_TEST_POSTGRES_URL"

# --- 6. Rust tests --------------------------------------------------------------------------

if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
# --no-fail-fast: every test binary runs, so one failure does not hide the others.
cargo test --workspace --no-fail-fast "$@"

# --- 7. Browser tests (e2e/) ----------------------------------------------------------------
# Playwright (e2e/) drives Debian's chromium against nginx + 2 replicas + Redis + a fresh MariaDB
# database, started and stopped by e2e/global-setup.js via nginx/cluster.sh. Skip with
# CHAT_TEST_SKIP_E2E=1. Screenshots and cluster logs: e2e/artifacts/; failures: e2e/test-results/.
run_e2e() {
    e2e_missing=()
    [ -x /usr/bin/chromium ] || e2e_missing+=(chromium)
    command -v node >/dev/null || e2e_missing+=(nodejs)
    command -v npm >/dev/null || e2e_missing+=(npm)
    if [ "${#e2e_missing[@]}" -gt 0 ]; then
        log "installing for the browser tests: ${e2e_missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${e2e_missing[@]}"
    fi
    # @playwright/test 1.65 needs Node.js 20 or newer (Debian 12's own nodejs is 18).
    if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
        die "the browser tests need Node.js >= 20 (found $(node --version)); install a newer nodejs or set CHAT_TEST_SKIP_E2E=1"
    fi
    if [ ! -x e2e/node_modules/.bin/playwright ]; then
        log "installing e2e/ npm packages (npm ci; no browser download)"
        (cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
    fi
    # `cargo test --workspace` above builds the server binary; build it only if it is not there.
    [ -x target/debug/chat-server ] || cargo build --workspace --bin chat-server
    log "browser tests: e2e/ (npx playwright test)"
    (
        cd e2e
        export CHAT_BIN="${CHAT_BIN:-$PWD/../target/debug/chat-server}"
        # cluster.sh creates its database on this MariaDB (the system one, or the private one above).
        export CHAT_MYSQL_URL="${CHAT_MYSQL_URL:-$CHAT_TEST_MYSQL_URL}"
        export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
        npx --no-install playwright test
    )
}
if [ "${CHAT_TEST_SKIP_E2E:-0}" = 1 ]; then
    log "skipping the browser tests (CHAT_TEST_SKIP_E2E=1)"
else
    run_e2e
fi

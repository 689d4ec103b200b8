# Sourced by scripts/run-tests (and usable by hand): a throwaway PostgreSQL server for
# the tests of claudefs-meta's PostgreSQL store, from Debian's `postgresql` package.
#
#   pg_scratch_start DIR   initdb a cluster in DIR, start it on a unix socket in DIR
#                          (no TCP listener), export CFS_TEST_POSTGRES_DSN
#   pg_scratch_stop DIR    stop it (fast shutdown) and remove DIR
#
# initdb refuses to run as root, so as root the cluster belongs to Debian's
# `postgres` user (runuser); otherwise to the current user. The server trusts local
# socket connections and skips fsync: it holds test data only, and the tests are about
# logic, not about this machine's disk.

pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

_pg_as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_scratch_start() {
    local dir=$1 bin
    bin=$(pg_bin) || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; return 1; }
    mkdir -p "$dir" && chmod 755 "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    _pg_as_owner "$bin/initdb" -D "$dir/data" -U claudefs --auth=trust -E UTF8 --locale=C.UTF-8 \
        --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    _pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
        "-c listen_addresses= -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB" \
        >/dev/null || { cat "$dir/server.log" >&2; return 1; }
    export CFS_TEST_POSTGRES_DSN="host=$dir port=5432 dbname=postgres user=claudefs"
}

pg_scratch_stop() {
    local dir=$1 bin
    bin=$(pg_bin) || return 0
    if [ -f "$dir/data/postmaster.pid" ]; then
        _pg_as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

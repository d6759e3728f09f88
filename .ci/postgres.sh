#!/usr/bin/env bash
# A throwaway PostgreSQL server for the scale-out test (tests/test_scale_out_postgres.py).
#
#   .ci/postgres.sh start [DIR]   install PostgreSQL from the Debian packages if missing (as root), create a cluster
#                                 in DIR (default: a new temp dir) with initdb, start it with pg_ctl as an
#                                 unprivileged user (`nobody` when run as root: the server refuses root), listening
#                                 only on a unix socket in DIR; create database `tune`; print the SQLAlchemy URL
#                                 (also written to DIR/url), e.g.  postgresql+psycopg://tune@/tune?host=/tmp/pg.x
#   .ci/postgres.sh stop DIR      stop that server and delete DIR
#
# Use:  export ADAPTIVE_SAMPLER_TEST_POSTGRES=$(.ci/postgres.sh start)
set -euo pipefail

bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$dir" ]] && command -v pg_config >/dev/null; then dir=$(pg_config --bindir); fi
    echo "$dir"
}

as_owner() {  # run a command as the cluster's owner
    if [[ $(id -u) -eq 0 ]]; then runuser -u nobody -- "$@"; else "$@"; fi
}

case "${1:-}" in
start)
    BIN=$(bindir)
    if [[ -z "$BIN" || ! -x "$BIN/initdb" ]]; then
        if [[ $(id -u) -ne 0 ]]; then
            echo "postgres.sh: PostgreSQL is not installed; run as root, or: sudo apt-get install -y postgresql" >&2
            exit 1
        fi
        echo "postgres.sh: installing PostgreSQL from the Debian packages" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
        BIN=$(bindir)
    fi
    DIR=${2:-$(mktemp -d /tmp/pg.XXXXXX)}  # short: a unix socket path must stay under ~100 characters
    mkdir -p "$DIR"
    if [[ $(id -u) -eq 0 ]]; then chown nobody "$DIR"; fi
    chmod 700 "$DIR"
    as_owner "$BIN/initdb" -D "$DIR/data" -U tune --auth=trust -E UTF8 --no-instructions >"$DIR/initdb.log"
    # no TCP, socket in DIR; fsync off: a throwaway cluster, speed over durability
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses='' -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null
    as_owner "$BIN/createdb" -h "$DIR" -U tune tune
    URL="postgresql+psycopg://tune@/tune?host=$DIR"
    echo "$URL" >"$DIR/url"
    echo "$URL"
    ;;
stop)
    DIR=${2:?usage: postgres.sh stop DIR}
    BIN=$(bindir)
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true
    rm -rf "$DIR"
    ;;
*)
    echo "usage: $0 start [DIR] | stop DIR" >&2
    exit 2
    ;;
esac

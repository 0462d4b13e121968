#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (Debian's postgresql package):
#   pg-test-server.sh start DIR PORT   initdb in DIR (as the postgres user), listen on 127.0.0.1:PORT,
#                                      create database vsphere; prints its URL
#   pg-test-server.sh stop DIR         stop it and remove DIR
#   pg-test-server.sh reset DIR PORT   drop and create database vsphere again (an empty store)
#   pg-test-server.sh kill DIR         stop it at once (immediate shutdown), keeping DIR
#   pg-test-server.sh resume DIR PORT  start it again on its data (after kill)
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
case "$1" in
    start)
        dir=$2 port=$3
        rm -rf "$dir"
        mkdir -p "$dir"
        chown postgres:postgres "$dir"
        su postgres -s /bin/sh -c "$bin/initdb -D '$dir/data' -A trust -U postgres >'$dir/initdb.log' 2>&1"
        su postgres -s /bin/sh -c "$bin/pg_ctl -D '$dir/data' -l '$dir/server.log' -w -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off\" start >/dev/null"
        su postgres -s /bin/sh -c "$bin/createdb -h 127.0.0.1 -p $port -U postgres vsphere"
        echo "postgres://postgres@127.0.0.1:$port/vsphere"
        ;;
    reset)
        su postgres -s /bin/sh -c "$bin/dropdb -h 127.0.0.1 -p $3 -U postgres --if-exists vsphere && $bin/createdb -h 127.0.0.1 -p $3 -U postgres vsphere"
        ;;
    kill)
        su postgres -s /bin/sh -c "$bin/pg_ctl -D '$2/data' -m immediate -w stop >/dev/null"
        ;;
    resume)
        dir=$2 port=$3
        su postgres -s /bin/sh -c "$bin/pg_ctl -D '$dir/data' -l '$dir/server.log' -w -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off\" start >/dev/null"
        ;;
    stop)
        dir=$2
        [ -d "$dir/data" ] && su postgres -s /bin/sh -c "$bin/pg_ctl -D '$dir/data' -m immediate -w stop >/dev/null 2>&1" || true
        rm -rf "$dir"
        ;;
    *) echo "usage: $0 start DIR PORT | stop DIR | reset DIR PORT | kill DIR | resume DIR PORT" >&2; exit 2 ;;
esac

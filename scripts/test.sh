#!/usr/bin/env bash
# The project's one test command: sets up, starts a throwaway PostgreSQL, lints, runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev

# System packages the tests need: PostgreSQL (storage tests run on it too), Chromium (browser tests) and exiftool
# (reads back the AI disclosure of the PNGs, tests/test_disclosure.py).
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
    || ! command -v exiftool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium chromium-driver fonts-dejavu-core \
      libimage-exiftool-perl >/dev/null
  else
    echo "warning: PostgreSQL/Chromium/exiftool missing and not root; those tests will be skipped" >&2
  fi
fi

cleanup() { :; }
trap 'cleanup' EXIT
if pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1) && [ -n "$pg_bin" ]; then
  pg_dir=$(mktemp -d /tmp/krea2-pg.XXXXXX)
  chmod 755 "$pg_dir"
  port=${KREA2_TEST_PG_PORT:-54329}  # another port lets two checkouts test side by side
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_dir"; as_pg=(runuser -u postgres --); fi
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U krea2 --auth=trust >/dev/null
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1" -l "$pg_dir/log" -w start >/dev/null
  cleanup() { "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg_dir"; }
  "${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p $port -U krea2 krea2_test
  export KREA2_TEST_POSTGRES_URL="postgresql+psycopg://krea2@127.0.0.1:$port/krea2_test"
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Both cores: one pytest-xdist worker each, a test file per worker at a time (module-scoped app servers and browsers
# stay one per file); tests/conftest.py gives each worker one thread and its own PostgreSQL database. `-n 0` runs
# everything in one process.
.venv/bin/python -m pytest -n 2 --dist loadfile "$@"

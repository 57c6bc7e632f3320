#!/bin/sh
# One-shot job run in the temporalio/admin-tools image: creates Temporal's two PostgreSQL
# databases (if missing) and brings both schemas to the version shipped in the image.
# Every step is idempotent, so the job runs on every `docker compose up`:
#   - `create` ignores "database already exists",
#   - `setup-schema -v 0.0` skips when the recorded version is already higher,
#   - `update-schema` applies only the versioned steps not yet applied.
# Connection settings come from SQL_PLUGIN / SQL_HOST / SQL_PORT / SQL_USER / SQL_PASSWORD
# (temporal-sql-tool reads these variables; the password therefore never shows up in `ps`).
set -eu

: "${SQL_PLUGIN:=postgres12}"
: "${SQL_HOST:=postgres}"
: "${SQL_PORT:=5432}"
: "${SQL_USER:=temporal}"
: "${TEMPORAL_DB:=temporal}"
: "${TEMPORAL_VISIBILITY_DB:=temporal_visibility}"
: "${SCHEMA_ROOT:=/etc/temporal/schema/postgresql/v12}"
export SQL_PLUGIN SQL_HOST SQL_PORT SQL_USER

echo "waiting for ${SQL_HOST}:${SQL_PORT}"
tries=0
until nc -z "$SQL_HOST" "$SQL_PORT"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "PostgreSQL at ${SQL_HOST}:${SQL_PORT} is not reachable" >&2
    exit 1
  fi
  sleep 2
done

setup_db() {
  db="$1"
  schema_dir="$2"
  echo "== ${db}: create / setup-schema / update-schema (${schema_dir})"
  temporal-sql-tool --db "$db" create
  temporal-sql-tool --db "$db" setup-schema -v 0.0
  temporal-sql-tool --db "$db" update-schema -d "$schema_dir"
}

setup_db "$TEMPORAL_DB" "${SCHEMA_ROOT}/temporal/versioned"
setup_db "$TEMPORAL_VISIBILITY_DB" "${SCHEMA_ROOT}/visibility/versioned"
echo "Temporal schema is up to date"

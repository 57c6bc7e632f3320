#!/bin/bash
# Runs once, from the official postgres image's /docker-entrypoint-initdb.d, on an EMPTY data
# directory only (a volume that already holds a cluster is left untouched).
#
# Creates:
#   role "temporal"   LOGIN CREATEDB  - Temporal's schema job creates and owns the databases
#                                       "temporal" and "temporal_visibility" itself.
#   role "taskomatic" LOGIN           - owner of the inventory database below.
#   database "taskomatic" OWNER taskomatic - `taskomatic db upgrade` applies its migrations here.
#
# Passwords come from the container environment (see docker-compose.yml); they are passed to
# psql as variables and quoted by psql (:'var'), so any character is safe in them.
# No `set -u`: if this file loses its executable bit, the image *sources* it into its own
# entrypoint, which does not run with -u.
set -eo pipefail

: "${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD must be set}"
: "${TASKOMATIC_DB_PASSWORD:?TASKOMATIC_DB_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 \
     --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
     -v temporal_pw="$TEMPORAL_DB_PASSWORD" \
     -v taskomatic_pw="$TASKOMATIC_DB_PASSWORD" <<'EOSQL'
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_pw';
CREATE ROLE taskomatic LOGIN PASSWORD :'taskomatic_pw';
CREATE DATABASE taskomatic OWNER taskomatic;
REVOKE ALL ON DATABASE taskomatic FROM PUBLIC;
EOSQL

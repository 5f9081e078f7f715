#!/bin/sh
# A database and a login role per service, each role able to reach only its own database
# (services never read each other's tables). Run once by the postgres image on an empty volume;
# passwords come from POSTGRES_PASSWORD_<SERVICE>.
set -eu
for service in intake inventory fulfillment notify; do
    var="POSTGRES_PASSWORD_$(echo "$service" | tr '[:lower:]' '[:upper:]')"
    password=$(printenv "$var")
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v role="$service" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"role" OWNER :"role";
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
done

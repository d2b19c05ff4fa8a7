#!/usr/bin/env bash
# `make schema-check`: each diesel schema file that diesel.toml lists must be
# exactly what `diesel print-schema` makes of the migrations.
#
# Creates a scratch database, migrates each service schema the way the services
# do (broker/migrations, then the service's own, with `search_path` pinned to
# the schema), prints each diesel.toml section from its schema and diffs it
# with the checked-in file. The scratch database is always dropped.
#
#   scripts/check-schema.sh           diff; fail if any file differs
#   scripts/check-schema.sh --write   regenerate the files instead
#
# Needs diesel_cli (the version .ci/run installs: its output is what the files
# hold), psql, python3, rustfmt, and a superuser URL in $ADMIN_DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

write=0
case "${1:-}" in
  "") ;;
  --write) write=1 ;;
  *) echo "usage: $0 [--write]" >&2; exit 2 ;;
esac

command -v diesel >/dev/null || {
  echo "diesel not found: cargo install diesel_cli --version 2.3.14 --no-default-features --features postgres --locked" >&2
  exit 1
}
diesel_version=$(diesel --version | awk '/Version:/ {print $2}')

# The service schemas (each service's ServiceSpec) and their own migrations.
# diesel.toml's `broker` section is printed from the first; every other one
# must print the same, or a service migration changed the broker's tables.
schemas=(orders customers inventory reporting)
declare -A service_migrations=(
  [orders]=services/order/migrations
  [customers]=services/customer/migrations
  [inventory]=services/inventory/migrations
  [reporting]=services/reporting/migrations
)

admin=${ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=dbps_schema_check_$$
# The scratch database's URL: the admin URL with another database name, its
# parameters kept.
base=${admin%%\?*}
params=
[[ $admin == *\?* ]] && params="${admin#*\?}&"
if [[ $base =~ ^[a-z]+://[^/]*$ ]]; then server=$base; else server=${base%/*}; fi
scratch_url="$server/$db?${params%&}"
scratch_url=${scratch_url%\?}
in_schema_url() { echo "$server/$db?${params}options=-csearch_path%3D$1"; }

scratch_sql() { psql -X -q -v ON_ERROR_STOP=1 "$scratch_url" -c "$1" >/dev/null; }

tmp=$(mktemp -d)
cleanup() {
  psql -X -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null ||
    echo "could not drop the scratch database $db" >&2
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# diesel.toml's sections: `name<TAB>file` lines, and for each section a config
# of its own in $tmp (`diesel print-schema` prints every section of the config
# it is given). Relative paths become absolute: diesel reads them relative to
# the config file.
python3 - "$tmp" >"$tmp/sections" <<'PY'
import json, os, sys, tomllib

tmp = sys.argv[1]
with open("diesel.toml", "rb") as f:
    print_schema = tomllib.load(f).get("print_schema", {})

def value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
    raise SystemExit(f"diesel.toml: unsupported value {v!r}")

for name, section in print_schema.items():
    if not isinstance(section, dict) or name == "filter":
        raise SystemExit(f"diesel.toml: print_schema.{name}: only named sections are supported")
    if "file" not in section:
        raise SystemExit(f"diesel.toml: print_schema.{name} has no file")
    with open(os.path.join(tmp, f"{name}.toml"), "w") as out:
        out.write("[print_schema]\n")
        for key, v in section.items():
            if key == "file":
                continue
            if key == "patch_file":
                v = os.path.abspath(v)
            out.write(f"{key} = {value(v)}\n")
    print(f"{name}\t{section['file']}")
PY

schema_of() { # section
  if [ "$1" = broker ]; then echo "${schemas[0]}"; return; fi
  local s
  for s in "${schemas[@]}"; do [ "$s" = "$1" ] && { echo "$s"; return; }; done
  echo "diesel.toml: print_schema.$1 is no schema this script migrates (${schemas[*]}, broker)" >&2
  return 1
}

quiet() { # command...: its output only if it fails
  "$@" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; return 1; }
}

psql -X -q -v ON_ERROR_STOP=1 "$admin" -c "CREATE DATABASE $db" >/dev/null
scratch_sql "DROP SCHEMA public"
# A config of its own: `diesel migration run` rewrites every `file` of the
# config it reads.
: >"$tmp/migrate.toml"
for schema in "${schemas[@]}"; do
  scratch_sql "CREATE SCHEMA $schema"
  for dir in broker/migrations "${service_migrations[$schema]}"; do
    quiet diesel migration run --config-file "$tmp/migrate.toml" \
      --migration-dir "$dir" --database-url "$(in_schema_url "$schema")"
  done
done

print_section() { # section schema: the section's file as printed from schema
  # Only `public` is printed unqualified, as the files are.
  scratch_sql "ALTER SCHEMA $2 RENAME TO public"
  diesel print-schema --config-file "$tmp/$1.toml" --database-url "$scratch_url" \
    >"$tmp/$1.$2.rs" 2>"$tmp/log" || { cat "$tmp/log" >&2; return 1; }
  scratch_sql "ALTER SCHEMA public RENAME TO $2"
}

failed=0
diverged=0
checked=0
while IFS=$'\t' read -r -u 3 section file; do
  schema=$(schema_of "$section")
  print_section "$section" "$schema"
  generated=$tmp/$section.$schema.rs
  if [ "$section" = broker ]; then
    for other in "${schemas[@]:1}"; do
      print_section broker "$other"
      if ! diff -u --label "broker tables in $schema" --label "broker tables in $other" \
        "$generated" "$tmp/broker.$other.rs"; then
        echo "the broker's tables differ between schemas $schema and $other:" \
          "a service migration must not change them" >&2
        diverged=1
      fi
    done
  fi
  checked=$((checked + 1))
  if cmp -s "$file" "$generated"; then
    continue
  elif ((write)); then
    cp "$generated" "$file"
    echo "wrote $file"
  else
    diff -u --label "$file" --label "$file from the migrations" "$file" "$generated" || true
    failed=1
  fi
done 3<"$tmp/sections"

((diverged)) && exit 1
if ((failed)); then
  echo "schema files differ from the migrations (diesel_cli $diesel_version): regenerate them with scripts/check-schema.sh --write" >&2
  exit 1
fi
echo "$checked schema files match the migrations"

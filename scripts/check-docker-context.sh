#!/usr/bin/env bash
# Part of `make lint`: the Docker build must see every workspace member, or
# `docker compose up --build` fails to resolve the workspace. Checks that each
# member listed in Cargo.toml is copied by the Dockerfile and not excluded by
# .dockerignore. (There is no Docker engine here to build the image itself.)
set -euo pipefail
cd "$(dirname "$0")/.."

members=$(python3 - <<'PY'
import tomllib
with open("Cargo.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["workspace"]["members"]))
PY
)

failed=0
while read -r member; do
  [ "$member" = "." ] && member_dir="" || member_dir="$member/"
  if [ -z "$member_dir" ]; then
    for file in Cargo.toml Cargo.lock build.rs src/ proto/; do
      grep -Eq "^COPY (.* )?$file( |\$)" Dockerfile || { echo "Dockerfile does not COPY $file (root crate)"; failed=1; }
    done
    continue
  fi
  # Copied by its own line or by a parent directory's (services/ holds services/order).
  covered=0
  path=$member_dir
  while [ -n "$path" ] && [ "$path" != "./" ]; do
    if grep -Eq "^COPY $path " Dockerfile; then covered=1; break; fi
    parent=$(dirname "${path%/}")
    [ "$parent" = "." ] && break
    path="$parent/"
  done
  ((covered)) || { echo "Dockerfile does not COPY workspace member $member"; failed=1; }
  # .dockerignore: a pattern matching the member or one of its parents excludes it.
  # Patterns are globs on purpose (.dockerignore's own syntax).
  # shellcheck disable=SC2254
  while read -r pattern; do
    pattern=${pattern%/}
    case "$pattern" in ''|'#'*|'!'*) continue ;; esac
    case "${member}" in
      $pattern|$pattern/*) echo ".dockerignore pattern '$pattern' excludes workspace member $member"; failed=1 ;;
    esac
  done <.dockerignore
done <<<"$members"

if ((failed)); then exit 1; fi
echo "docker build context: all $(wc -l <<<"$members") workspace members copied"

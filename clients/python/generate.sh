#!/usr/bin/env bash
# Generates the Python messages and gRPC stubs of every contract under
# ../../proto into ./gen (not committed). The well-known types
# (google/protobuf/timestamp.proto) come with grpcio-tools.
#
# Uses $PYTHON if set, else ./.venv/bin/python if it exists, else python3.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_dir="$(cd "$here/../../proto" && pwd)"
out_dir="$here/gen"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then
    PYTHON="$here/.venv/bin/python"
  else
    PYTHON=python3
  fi
fi

if ! "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "generate.sh: grpcio-tools is not installed for $PYTHON;" >&2
  echo "  run: python3 -m venv .venv && .venv/bin/pip install -r requirements.txt" >&2
  exit 1
fi

# Paths relative to proto/ (e.g. order/v1/order.proto); portable to bash 3.2.
protos=()
while IFS= read -r proto; do
  protos+=("${proto#./}")
done < <(cd "$proto_dir" && find . -name '*.proto' | sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  echo "generate.sh: no .proto files under $proto_dir" >&2
  exit 1
fi

rm -rf "$out_dir"
mkdir -p "$out_dir"

# `python -m grpc_tools.protoc` adds the bundled well-known types to the include path.
(cd "$proto_dir" && "$PYTHON" -m grpc_tools.protoc \
  --proto_path=. \
  --python_out="$out_dir" \
  --pyi_out="$out_dir" \
  --grpc_python_out="$out_dir" \
  "${protos[@]}")

echo "generated ${#protos[@]} protos into ${out_dir#"$here"/}/ with $("$PYTHON" -m grpc_tools.protoc --version)"

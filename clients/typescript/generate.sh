#!/usr/bin/env bash
# Generates TypeScript types for the gRPC APIs under ../../proto into ./gen
# (not committed), with proto-loader-gen-types from @grpc/proto-loader: no
# protoc needed. The messages are loaded at run time by @grpc/proto-loader
# from the same .proto files, with the same options as below (see
# src/place_order.ts), so the types match what the loader produces.
#
# Only the service files (<package>/v1/<package>.proto) are given: the
# generator names one file per input after its base name, and the four
# events.proto files would overwrite each other's. The client needs no events.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_dir="$(cd "$here/../../proto" && pwd)"
out_dir="$here/gen"
generator="$here/node_modules/.bin/proto-loader-gen-types"

if [[ ! -x "$generator" ]]; then
  echo "generate.sh: $generator is missing; run: npm ci" >&2
  exit 1
fi

protos=()
while IFS= read -r proto; do
  protos+=("${proto#./}")
done < <(cd "$proto_dir" && find . -name '*.proto' ! -name events.proto | sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  echo "generate.sh: no service .proto files under $proto_dir" >&2
  exit 1
fi

rm -rf "$out_dir"
"$generator" --grpcLib=@grpc/grpc-js --outDir="$out_dir" --includeDirs="$proto_dir" \
  --longs=String --enums=String --defaults --oneofs "${protos[@]}"

echo "generated ${#protos[@]} protos into gen/"

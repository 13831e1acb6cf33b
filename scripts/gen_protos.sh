#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf stubs in kryten_pipeline/proto_gen from proto/.
#
# Reproducible: uses `python -m grpc_tools.protoc` from the project venv and refuses a grpcio-tools other
# than the one pinned in pyproject.toml (grpcio-tools 1.81.x is the line compatible with dagster's
# protobuf < 7 pin; see infra-notes). Usage: scripts/gen_protos.sh   (or: make protos)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

pinned="$(sed -n 's/.*"grpcio-tools==\([^"]*\)".*/\1/p' pyproject.toml | head -n1)"
installed="$("$python" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' 2>/dev/null || true)"
if [[ -z "$installed" ]]; then
  echo "gen_protos: grpcio-tools is not installed for $python (pip install -e '.[dev]')" >&2
  exit 1
fi
if [[ -n "$pinned" && "$installed" != "$pinned" ]]; then
  echo "gen_protos: grpcio-tools $installed installed, pyproject.toml pins $pinned; install the pin first" >&2
  exit 1
fi

out_pkg=kryten_pipeline/proto_gen
# protoc writes `from <proto dir as package> import x_pb2` into *_pb2_grpc.py. Staging the sources under
# kryten_pipeline/proto_gen/ makes that import absolute within our package, with no post-editing.
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$out_pkg"
cp -R proto/. "$stage/$out_pkg/"

mapfile -t protos < <(cd "$stage" && find "$out_pkg" -name '*.proto' | LC_ALL=C sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  echo "gen_protos: no .proto files under proto/" >&2
  exit 1
fi

# Drop previous output (but not proto_gen/__init__.py) so renamed protos leave no stale modules behind.
find "$out_pkg" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +

(cd "$stage" && "$python" -m grpc_tools.protoc -I . \
  --python_out="$root" --pyi_out="$root" --grpc_python_out="$root" "${protos[@]}")

# Every directory on the way down is a regular package.
while IFS= read -r dir; do
  [[ -f "$dir/__init__.py" ]] || : > "$dir/__init__.py"
done < <(find "$out_pkg" -type d -not -name __pycache__)
if [[ ! -s "$out_pkg/__init__.py" ]]; then
  printf '"""Generated gRPC/protobuf code. Do not edit: run scripts/gen_protos.sh (make protos)."""\n' \
    > "$out_pkg/__init__.py"
fi

echo "gen_protos: generated ${#protos[@]} proto file(s) with grpcio-tools $installed into $out_pkg"

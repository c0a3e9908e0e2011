#!/usr/bin/env bash
# Wheelhouse for building the msir image without an index: every wheel msir needs (CPU torch, TORCH_SPEC, first),
# downloaded on the host with its pip settings, kept in the cache (MSIR_DEPLOY_CACHE, default
# ~/.cache/msir/deploy) under a key of pyproject.toml and TORCH_SPEC, and linked into docker/wheels/ of the
# build context, where docker/Dockerfile finds it with --build-arg WHEELS=1.
#   docker/offline/wheelhouse.sh            # fill docker/wheels/ (downloads only when the key changed)
#   docker/offline/wheelhouse.sh --clean    # empty docker/wheels/ (the cache stays)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${MSIR_DEPLOY_CACHE:-$HOME/.cache/msir/deploy}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
target="$repo/docker/wheels"

clean_target() { find "$target" -maxdepth 1 -name '*.whl' -delete; }
if [ "${1:-}" = "--clean" ]; then
  clean_target
  exit 0
fi

# The key: what decides the wheels (msir's dependencies, its milvus extra and build backend, TORCH_SPEC, Python's version).
key="$("$python" - "$repo/pyproject.toml" "$torch_spec" <<'PY' | sha256sum | cut -c1-16
import sys, tomllib
meta = tomllib.load(open(sys.argv[1], "rb"))
print(meta["project"]["dependencies"], meta["project"]["optional-dependencies"]["milvus"],
      meta["build-system"]["requires"], sys.argv[2], sys.version_info[:2])
PY
)"
house="$cache/wheels-$key"
if [ ! -f "$house/.complete" ]; then
  rm -rf "$house" "$cache"/wheels-*  # older keys: wheels of a pyproject that no longer is
  mkdir -p "$house"
  echo "downloading wheels into $house" >&2
  # One resolution for torch and msir together, so that `torch>=2.4` of pyproject is met by TORCH_SPEC (the CPU
  # wheel on these machines) and never by a CUDA build with its nvidia-* packages. setuptools: msir's build
  # backend, for `pip install .` without an index.
  "$python" -m pip download --quiet --dest "$house" --only-binary=:all: \
    "$torch_spec" "setuptools>=77.0.3" "$repo[milvus]" >&2
  bad="$(find "$house" -maxdepth 1 \( -name 'nvidia_*' -o -name 'triton-*' \) -printf '%f ')"
  if [ -n "$bad" ] || ! ls "$house" | grep -q '^torch-.*+cpu'; then
    echo "the wheelhouse is not CPU-only (no torch +cpu wheel, or CUDA packages: $bad)" >&2
    exit 1
  fi
  touch "$house/.complete"
fi
clean_target
# Hard links when the cache shares the file system with the checkout (no copy), copies otherwise.
cp -l "$house"/*.whl "$target"/ 2>/dev/null || cp "$house"/*.whl "$target"/
echo "docker/wheels: $(find "$target" -maxdepth 1 -name '*.whl' | wc -l) wheels from $house" >&2

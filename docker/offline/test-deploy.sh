#!/usr/bin/env bash
# `make test-deploy`: build the images and run the docker-compose deployment for real (tests/test_deploy_compose.py).
#
# 1. A Docker engine: the one running, or Debian's docker.io installed and dockerd started here (root only).
#    Without one the deploy test is skipped with the reason, and fails under CI=true.
# 2. Unless MSIR_DEPLOY_ONLINE=1 (Docker Hub and PyPI reachable from the build): a debootstrap base image with
#    Debian's Python 3.11 and a wheelhouse, both built once and reused (cache: MSIR_DEPLOY_CACHE, default
#    ~/.cache/msir/deploy).
# 3. pytest -m docker: builds the images, runs compose steps 1-6, tears everything down.
# Whatever this script started (dockerd, and with it containerd) is stopped by its PID on the way out.
set -euo pipefail
cd "$(dirname "$0")/../.."

export MSIR_DEPLOY_CACHE="${MSIR_DEPLOY_CACHE:-$HOME/.cache/msir/deploy}"
mkdir -p "$MSIR_DEPLOY_CACHE"
started=$(date +%s)

skip_or_fail() {
  if [ "${CI:-}" = true ]; then
    echo "test-deploy: FAILED: $1" >&2
    exit 1
  fi
  echo "test-deploy: SKIPPED: $1"
  exit 0
}

rc=0
docker/offline/engine.sh start || rc=$?
if [ "$rc" = 3 ]; then
  skip_or_fail "no Docker engine and not root to install and start one (run as root, or start Docker yourself)"
elif [ "$rc" != 0 ]; then
  exit "$rc"
fi
trap 'docker/offline/wheelhouse.sh --clean; docker/offline/engine.sh stop' EXIT

if [ "${MSIR_DEPLOY_ONLINE:-}" = 1 ]; then
  unset DEPLOY_BASE_IMAGE DEPLOY_POSTGRES_IMAGE DEPLOY_WHEELS
else
  t=$(date +%s)
  DEPLOY_BASE_IMAGE="$(docker/offline/base_image.sh | tail -n 1)"
  DEPLOY_BASE_IMAGE_S=$(($(date +%s) - t))
  t=$(date +%s)
  docker/offline/wheelhouse.sh
  DEPLOY_WHEELHOUSE_S=$(($(date +%s) - t))
  echo "base image: $DEPLOY_BASE_IMAGE_S s, wheelhouse: $DEPLOY_WHEELHOUSE_S s"
  export DEPLOY_BASE_IMAGE DEPLOY_BASE_IMAGE_S DEPLOY_WHEELHOUSE_S DEPLOY_WHEELS=1 \
    DEPLOY_POSTGRES_IMAGE="${DEPLOY_POSTGRES_IMAGE:-msir-postgres:15}"
fi
export DEPLOY_TIMINGS="${DEPLOY_TIMINGS:-$MSIR_DEPLOY_CACHE/last-run.json}"

.venv/bin/pytest -q -p no:cacheprovider -m docker tests/test_deploy_compose.py
echo "test-deploy: passed in $(($(date +%s) - started)) s (timings: $DEPLOY_TIMINGS)"

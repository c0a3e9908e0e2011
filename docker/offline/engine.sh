#!/usr/bin/env bash
# The Docker engine for `make test-deploy`.
#
#   docker/offline/engine.sh start   # exit 0: an engine answers (ours or one already running); 3: none and we
#                                    # cannot start one (not root); anything else: an error
#   docker/offline/engine.sh stop    # stops the dockerd that `start` started (by its PID), nothing else
#
# `start` installs Debian's docker.io, docker-compose and debootstrap when they are missing (root only) and starts
# dockerd by hand (these machines have no init system). An engine that already answers is used and left alone.
# MSIR_DEPLOY_CACHE (default ~/.cache/msir/deploy) holds the PID file and the engine log; MSIR_DOCKER_DATA_ROOT
# (default /var/lib/docker) the engine's images, so that they survive between runs (the warm case).
set -euo pipefail

cache="${MSIR_DEPLOY_CACHE:-$HOME/.cache/msir/deploy}"
pidfile="$cache/dockerd.pid"
mkdir -p "$cache"

engine_answers() { docker info >/dev/null 2>&1; }

start() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if engine_answers && ! command -v docker-compose >/dev/null 2>&1 && [ "$(id -u)" != 0 ]; then
    echo "docker-compose is missing and we are not root to install it" >&2
    return 3
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "missing ${missing[*]} and not root on a Debian host: cannot install them" >&2
      return 3
    fi
    echo "installing Debian's ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if engine_answers; then
    echo "using the Docker engine already running ($(docker info --format '{{.ServerVersion}}'))"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "no Docker engine answers and starting dockerd needs root" >&2
    return 3
  fi
  local log="$cache/dockerd.log"
  # setsid: its own session, so that a Ctrl-C in the terminal reaches it only through `stop`.
  setsid dockerd --data-root "${MSIR_DOCKER_DATA_ROOT:-/var/lib/docker}" >"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if engine_answers; then
      echo "started dockerd (PID $(cat "$pidfile"), log $log)"
      return 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "dockerd exited at start; its log:" >&2
      tail -n 30 "$log" >&2
      rm -f "$pidfile"
      return 1
    fi
    sleep 0.5
  done
  echo "dockerd did not answer within 60 s; its log:" >&2
  tail -n 30 "$log" >&2
  stop
  return 1
}

stop() {
  [ -f "$pidfile" ] || return 0
  local pid
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    # dockerd stops the containerd it started before it exits.
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "dockerd (PID $pid) still running after 30 s: killing it" >&2
      kill -KILL "$pid" || true
    fi
    echo "stopped dockerd (PID $pid)"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Local base image for hosts that cannot pull from a registry: Debian 12 (bookworm) minbase from the Debian mirror
# this machine's apt already uses (or DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR; no archive host is written here),
# with Debian's Python 3.11 (python3, python3-venv, `python` -> python3), imported into the engine as
#   ${MSIR_BASE_IMAGE:-msir-base:bookworm-py311}
# Built once: the root filesystem is kept as a tarball in the cache (MSIR_DEPLOY_CACHE, default
# ~/.cache/msir/deploy), so an engine without the image (a fresh data root) gets it back by a `docker import`.
# Needs root (debootstrap) the first time. Prints the image name on its last line.
set -euo pipefail

name="${MSIR_BASE_IMAGE:-msir-base:bookworm-py311}"
cache="${MSIR_DEPLOY_CACHE:-$HOME/.cache/msir/deploy}"

# The first URI of a suite in this machine's apt configuration: one-line sources.list entries
# ("deb [opts] URI SUITE COMPONENT...") and deb822 .sources files ("URIs:" / "Suites:" stanzas).
apt_uri_for() {
  local want="$1" f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk -v want="$want" '$1 == "deb" { sub(/\[[^]]*\] */, ""); if ($3 == want) { print $2; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk -v want="$want" '
      /^[[:space:]]*$/ { if (found && uri != "") { print uri; printed = 1; exit } ; uri = ""; found = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) found = 1 }
      END { if (!printed && found && uri != "") print uri }' "$f"
  done
}
mirror="${DEBIAN_MIRROR:-$(apt_uri_for bookworm | head -n 1)}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-$(apt_uri_for bookworm-security | head -n 1)}"
if [ -z "$mirror" ] || [ -z "$security_mirror" ]; then
  echo "no Debian bookworm mirror found in /etc/apt (sources.list, sources.list.d/*.list or *.sources):" \
    "set DEBIAN_MIRROR (the archive, for bookworm and bookworm-updates) and DEBIAN_SECURITY_MIRROR" \
    "(for bookworm-security) to the mirrors this host may use" >&2
  exit 2
fi
tarball="$cache/base-bookworm-py311.tar"
mkdir -p "$cache"

if docker image inspect "$name" >/dev/null 2>&1; then
  echo "base image $name: present" >&2
  echo "$name"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 3; }
  work="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "debootstrap bookworm into $work (Debian's archive: $mirror)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$work/rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
  # What an image does not need: package caches, lists (apt-get update fetches them again), docs, logs.
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
    "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/var/log/* "$work"/rootfs/tmp/*
  # Containers have no init system: keep services from starting when packages are installed (as Debian's images do).
  printf '#!/bin/sh\nexit 101\n' >"$work/rootfs/usr/sbin/policy-rc.d"
  chmod 755 "$work/rootfs/usr/sbin/policy-rc.d"
  echo "deb $mirror bookworm main" >"$work/rootfs/etc/apt/sources.list"
  echo "deb $mirror bookworm-updates main" >>"$work/rootfs/etc/apt/sources.list"
  echo "deb $security_mirror bookworm-security main" >>"$work/rootfs/etc/apt/sources.list"
  tar -C "$work/rootfs" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi

echo "importing $tarball as $name" >&2
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  "$tarball" "$name" >/dev/null
echo "$name"

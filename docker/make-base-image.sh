#!/usr/bin/env bash
# docker/make-base-image.sh [IMAGE] — make a Debian 12 base image locally, for machines that
# reach Debian's package mirrors but no image registry: debootstrap a minimal bookworm
# (about two minutes) and `docker import` it. Does nothing when IMAGE already exists.
# The Dockerfiles then build FROM it with --build-arg BASE=IMAGE (docker/test.sh does).
#
#   IMAGE   default capgate-base:bookworm
#   MIRROR  default http://deb.debian.org/debian
# Needs root, debootstrap and a running Docker engine.
set -euo pipefail
IMAGE=${1:-capgate-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "make-base-image: $IMAGE exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "make-base-image: debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }
rootfs=$(mktemp -d /tmp/capgate-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "make-base-image: debootstrap bookworm from $MIRROR into $rootfs …"
debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
  || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# The same sources as the official image, and no package lists inside the image.
echo "deb $MIRROR bookworm main" >"$rootfs/etc/apt/sources.list"
echo "deb $MIRROR bookworm-updates main" >>"$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "make-base-image: $IMAGE made"

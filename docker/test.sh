#!/usr/bin/env bash
# docker/test.sh — bring the compose environment up, check that it works as a user would,
# tear it down. Run as root from anywhere; CI runs it.
#
# What it checks, through the ports published on 127.0.0.1: a sync write through site A's
# capgate is on site B (read through site B's capgate); an async write arrives there too;
# the link is cut: site A's capgate sees the partition, refuses the sync write (55000) and
# takes the async one; the link heals: the queue drains; `capgate verify` in site A's
# container says both sites are equal.
#
# It starts dockerd when none runs, makes the base image when no registry can give it
# (make-base-image.sh), and builds the images from capgate binaries built on the host
# (target/debug unless CAPGATE_BINARIES_FROM=target/release), stripped into target/docker.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
log() { echo "docker/test: $*"; }
die() { echo "docker/test: FAILED: $*" >&2; exit 1; }
started=$SECONDS
dockerd_pid=

# 1. A Docker engine and Compose.
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || die "no Docker engine: apt-get install docker.io"
  log "starting dockerd (stopped again at the end)"
  dockerd >/tmp/capgate-dockerd.log 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.3; done
  docker info >/dev/null 2>&1 || { tail -20 /tmp/capgate-dockerd.log >&2; die "dockerd did not start"; }
fi
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
command -v "${compose[0]}" >/dev/null || die "no Compose: apt-get install docker-compose"

# 2. The base image: the official one when it can be pulled, else one made here.
base=${CAPGATE_BASE_IMAGE:-}
if [[ -z $base ]]; then
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    base=debian:bookworm-slim
  elif docker image inspect capgate-base:bookworm >/dev/null 2>&1; then
    base=capgate-base:bookworm
  elif timeout 15 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    base=debian:bookworm-slim
  else
    base=capgate-base:bookworm
    docker/make-base-image.sh "$base"
  fi
fi
log "base image $base"

# 3. capgate built on the host, stripped for the image.
from=${CAPGATE_BINARIES_FROM:-target/debug}
if [[ ! -x $from/capgate || ! -x $from/capgate-link ]]; then
  log "building capgate ($from)"
  if [[ $from == target/release ]]; then cargo build --release --bins; else cargo build --bins; fi
fi
mkdir -p target/docker
strip -o target/docker/capgate "$from/capgate"
strip -o target/docker/capgate-link "$from/capgate-link"

# 4. Up, on free loopback ports, under a project name of its own.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export CAPGATE_BASE_IMAGE=$base CAPGATE_TARGET=prebuilt CAPGATE_BINARIES=target/docker
export CAPGATE_A_PORT=$(free_port) CAPGATE_A_ADMIN_PORT=$(free_port) CAPGATE_B_PORT=$(free_port)
export CAPGATE_B_ADMIN_PORT=$(free_port) CAPGATE_LINK_CONTROL_PORT=$(free_port)
dc=("${compose[@]}" -p capgate-test -f docker/compose.yml)
cleanup() {
  local status=$?
  if [[ $status -ne 0 ]]; then "${dc[@]}" logs --tail=30 >&2 || true; fi
  "${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  if [[ -n ${dockerd_pid:-} ]]; then kill "$dockerd_pid" 2>/dev/null || true; fi
  log "torn down ($((SECONDS - started)) s in all)"
}
trap cleanup EXIT
log "building the images and starting the sites"
"${dc[@]}" build -q >/dev/null
"${dc[@]}" up -d >/dev/null

# 5. Checks, as a user would make them.
TOKEN=compose-demo-token
A="postgres://postgres@127.0.0.1:$CAPGATE_A_PORT/shop"
B="postgres://postgres@127.0.0.1:$CAPGATE_B_PORT/shop"
status() { curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$CAPGATE_A_ADMIN_PORT/status"; }
replica_is() { status | grep -q "\"state\":\"$1\""; }
shipping() { status | grep -q '"shipping":"running"'; }
on_b() { [[ $(psql -X -tA "$B" -c "$1") == "$2" ]]; }
wait_for() {  # what, command…: retry for up to 120 s
  local what=$1; shift
  for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "gave up waiting for $what"
}
sql() { psql -X -q -tA -v ON_ERROR_STOP=1 "$1" -c "$2"; }
link() {  # one capgate-link command on the published control port
  local answer
  exec 3<>"/dev/tcp/127.0.0.1/$CAPGATE_LINK_CONTROL_PORT"
  echo "$1" >&3
  read -r answer <&3
  exec 3>&-
  [[ $answer == ok ]] || die "link $1: $answer"
}

wait_for "site A's replica to be healthy" replica_is healthy
wait_for "site A's shipper to run" shipping
log "both sites up; site A's replica healthy"

sql "$A" "UPDATE accounts SET balance = balance - 10 WHERE id = 1"
wait_for "the sync write on site B" on_b "SELECT balance FROM accounts WHERE id = 1" 90.00
sql "$A" "INSERT INTO page_views (path) VALUES ('/'), ('/docker')"
wait_for "the async write on site B" on_b "SELECT count(*) FROM page_views" 2
log "sync and async writes reached site B"

link blackhole
wait_for "site A to see the partition" replica_is partitioned
if out=$(psql -X -q -v ON_ERROR_STOP=1 "$A" -c "UPDATE accounts SET balance = balance - 10 WHERE id = 1" 2>&1); then
  die "a sync write was accepted during the partition"
fi
[[ $out == *'replica "b" is partitioned'* ]] || die "the sync write failed otherwise: $out"
sql "$A" "INSERT INTO page_views (path) VALUES ('/cut')"
log "link cut: the sync write refused, the async one accepted"

link restore
link reset
wait_for "the queue to drain" on_b "SELECT count(*) FROM page_views" 3
wait_for "site A's replica to be healthy again" replica_is healthy
sql "$A" "UPDATE accounts SET balance = balance - 10 WHERE id = 1"
wait_for "sync writes again" on_b "SELECT balance FROM accounts WHERE id = 1" 80.00
log "link healed: the queue drained, sync writes accepted again"

"${dc[@]}" exec -T capgate-a capgate verify --config /etc/capgate/capgate.toml >/tmp/capgate-docker-verify.txt \
  || { cat /tmp/capgate-docker-verify.txt >&2; die "capgate verify found the sites different"; }
grep -q "summary: 3 table comparison(s), 3 equal, 0 diverged" /tmp/capgate-docker-verify.txt \
  || die "unexpected verify output: $(cat /tmp/capgate-docker-verify.txt)"
log "capgate verify in site A's container: accounts, cart_items and page_views equal on both sites"
log "ok"

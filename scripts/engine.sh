#!/usr/bin/env bash
# `make engine`: a Docker engine and the project's images, for CI (.ci/run) or a user who asks.
#
#   scripts/engine.sh start    install Debian's docker.io (and docker-compose, debootstrap) when
#                              missing (root, apt), start dockerd on $DOCKER_HOST unless an engine
#                              already answers there, wait for it, then `make images`
#   scripts/engine.sh stop     stop the dockerd that `start` started (its pid file), nothing else
#   scripts/engine.sh status
#
# DOCKER_HOST: unix:///path/to.sock (default unix:///var/run/docker.sock). An engine on another
#   socket gets its own data and exec roots (/var/lib/docker-<name>, /run/docker-<name>), so two
#   engines on one machine never share state.
# ENGINE_WAIT: seconds to wait for dockerd to answer (default 60).
# Each phase says how long it took; any failure exits non-zero with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

sock=${DOCKER_HOST:-unix:///var/run/docker.sock}
case $sock in
  unix://*) path=${sock#unix://} ;;
  *) echo "engine: DOCKER_HOST=$sock is not a local unix socket; start that engine yourself" >&2; exit 2 ;;
esac
export DOCKER_HOST=$sock
name=$(basename "$path" .sock)
if [ "$name" = docker ]; then
  data_root=/var/lib/docker exec_root=/var/run/docker
else
  data_root=/var/lib/docker-$name exec_root=/run/docker-$name
fi
state_dir=$PWD/var/engine
pidfile=$state_dir/dockerd-$name.pid
logfile=$state_dir/dockerd-$name.log

say() { echo "engine: $*"; }
die() { echo "engine: $*" >&2; exit 1; }
answers() { timeout 15 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
since() { echo $(($(date +%s) - $1)); }

install_missing() {
  local want=()
  command -v dockerd >/dev/null || want+=(docker.io)
  { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || want+=(docker-compose)
  { command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ]; } || want+=(debootstrap)
  command -v docker >/dev/null || want+=(docker.io)
  [ ${#want[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${want[*]}: install them (apt-get install ${want[*]}) or run as root"
  command -v apt-get >/dev/null || die "missing ${want[*]} and no apt-get to install them"
  local t0; t0=$(date +%s)
  say "installing ${want[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${want[@]}" >"$state_dir/apt.log" 2>&1 \
    || { tail -20 "$state_dir/apt.log" >&2; die "apt-get install ${want[*]} failed"; }
  say "installed ${want[*]} in $(since "$t0") s"
}

start_dockerd() {
  [ "$(id -u)" -eq 0 ] || die "no engine answers on $sock and dockerd needs root to start"
  local t0; t0=$(date +%s)
  say "starting dockerd on $sock (data root $data_root)"
  mkdir -p "$(dirname "$path")"
  setsid dockerd --host "$sock" --data-root "$data_root" --exec-root "$exec_root" --pidfile "$pidfile" \
    </dev/null >"$logfile" 2>&1 &
  local pid=$! wait_max=${ENGINE_WAIT:-60}
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -15 "$logfile" >&2
      die "dockerd exited while starting (log: $logfile)"
    fi
    if [ "$(since "$t0")" -ge "$wait_max" ]; then
      tail -15 "$logfile" >&2
      kill "$pid" 2>/dev/null || true
      die "dockerd did not answer within $wait_max s (log: $logfile)"
    fi
    sleep 1
  done
  say "dockerd (pid $pid) answered in $(since "$t0") s"
}

stop_dockerd() {
  if [ ! -s "$pidfile" ]; then
    say "no engine started by this script on $sock (no $pidfile)"
    return 0
  fi
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    say "stopped dockerd (pid $pid) on $sock"
  fi
  rm -f "$pidfile"
}

case ${1:-start} in
  start)
    mkdir -p "$state_dir"
    t_all=$(date +%s)
    install_missing
    if answers; then
      say "an engine already answers on $sock"
    else
      start_dockerd
    fi
    t0=$(date +%s)
    make --no-print-directory images || die "make images failed"
    say "images in $(since "$t0") s; provisioning took $(since "$t_all") s in all"
    ;;
  stop) stop_dockerd ;;
  status)
    if answers; then say "an engine answers on $sock"; else say "no engine answers on $sock"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

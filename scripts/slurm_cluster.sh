#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian 12's slurm-wlm 22.05 + munge), for
# dm-tune's Slurm tests and for trying `dm_tune.cluster.slurm` without a real cluster.
#
#   scripts/slurm_cluster.sh start    # install if missing, configure, start, wait until idle
#   scripts/slurm_cluster.sh status   # exit 0 when up, 3 when not
#   scripts/slurm_cluster.sh stop     # cancel every job, stop slurmd, slurmctld and munged
#
# Runs as root, without systemd and without stdin (CI): the daemons are started directly
# and their pid files are the only handles used to stop them. `start` is idempotent: when
# the cluster is already up it does nothing. Settings (environment):
#   SLURM_CONF            slurm.conf to write and use      (default /etc/slurm/slurm.conf)
#   DM_TUNE_SLURM_STATE   state, spool and log directory    (default /var/spool/dm-tune-slurm)
#   DM_TUNE_SLURM_CPUS    CPUs of the node                  (default: nproc)
#   DM_TUNE_SLURM_PARTITION  partition name                 (default: local)
#   DM_TUNE_SLURM_FORCE=1 overwrite a slurm.conf this script did not write
# A slurm.conf is only ever rewritten when it carries this script's marker line, so a
# real cluster's configuration is never touched.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
template="$here/slurm/slurm.conf.in"
export SLURM_CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
state_dir="${DM_TUNE_SLURM_STATE:-/var/spool/dm-tune-slurm}"
run_dir="$state_dir/run"
partition="${DM_TUNE_SLURM_PARTITION:-local}"
node="$(hostname -s)"
munge_pidfile=/run/munge/munged.pid
marker="DM_TUNE_SLURM_MARKER"
packages=(slurm-wlm munge)

log() { echo "slurm_cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------- processes
pid_alive() { # pidfile expected-comm
  local pid
  [[ -s "$1" ]] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
  # An exited daemon not yet reaped (zombie) is not alive.
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

stop_pidfile() { # pidfile comm: TERM, then KILL after 15 s; only that one process
  local pid
  pid_alive "$1" "$2" || return 0
  pid="$(cat "$1")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do
    pid_alive "$1" "$2" || return 0
    sleep 0.1
  done
  log "$2 (pid $pid) ignored SIGTERM for 15 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

node_state() { # prints the node's state (idle, mixed, allocated, down*, ...) or nothing
  timeout 10 sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -n1 || true
}

is_up() {
  pid_alive "$munge_pidfile" munged && pid_alive "$run_dir/slurmctld.pid" slurmctld \
    && pid_alive "$run_dir/slurmd.pid" slurmd || return 1
  case "$(node_state)" in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
  esac
}

# ---------------------------------------------------------------- install
install_packages() {
  local missing=() cmd created_policy=0 t0
  for cmd in slurmctld slurmd sinfo sbatch munged; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ "$(id -u)" == 0 ]] || die "missing ${missing[*]}; run as root to apt-get install ${packages[*]}"
  log "installing ${packages[*]} (missing: ${missing[*]})"
  t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' maintainer scripts from starting the daemons (no systemd here, and
  # no configuration yet); a policy-rc.d that already exists is left as it is.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  local apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold)
  # Stale package lists (404s) or none at all: update once and try again.
  if ! apt-get install "${apt_opts[@]}" "${packages[@]}" </dev/null >/dev/null 2>&1; then
    apt-get update -qq </dev/null >/dev/null
    apt-get install "${apt_opts[@]}" "${packages[@]}" </dev/null >/dev/null
  fi
  [[ $created_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  log "installed in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- configuration
write_config() {
  local cpus mem_kb real_mb def_mem tmp
  cpus="${DM_TUNE_SLURM_CPUS:-$(nproc)}"
  mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
  # A bit under physical: slurmd drains a node whose RealMemory exceeds what it finds.
  real_mb=$((mem_kb * 9 / 10 / 1024))
  def_mem=$((real_mb / cpus / 2))
  mkdir -p "$(dirname "$SLURM_CONF")" "$state_dir/ctld" "$state_dir/d" "$run_dir"
  chmod 0755 "$state_dir"
  tmp="$(mktemp)"
  sed -e "s|@HOSTNAME@|$node|g" -e "s|@CPUS@|$cpus|g" -e "s|@REAL_MEMORY@|$real_mb|g" \
    -e "s|@DEF_MEM_PER_CPU@|$def_mem|g" -e "s|@STATE_DIR@|$state_dir|g" \
    -e "s|@RUN_DIR@|$run_dir|g" -e "s|@PARTITION@|$partition|g" \
    -e "s|@CTLD_PORT@|${DM_TUNE_SLURM_CTLD_PORT:-6817}|g" \
    -e "s|@SLURMD_PORT@|${DM_TUNE_SLURM_SLURMD_PORT:-6818}|g" "$template" >"$tmp"
  if [[ -e "$SLURM_CONF" ]] && ! grep -q "$marker" "$SLURM_CONF" \
    && [[ "${DM_TUNE_SLURM_FORCE:-0}" != 1 ]]; then
    rm -f "$tmp"
    die "$SLURM_CONF was not written by this script; refusing to overwrite it" \
      "(set DM_TUNE_SLURM_FORCE=1 to replace it, or SLURM_CONF to use another path)"
  fi
  if [[ -e "$SLURM_CONF" ]] && cmp -s "$tmp" "$SLURM_CONF"; then
    rm -f "$tmp"
  else
    mv "$tmp" "$SLURM_CONF"
    chmod 0644 "$SLURM_CONF"
    # Running daemons read their configuration at start-up: make them start afresh.
    if pid_alive "$run_dir/slurmctld.pid" slurmctld || pid_alive "$run_dir/slurmd.pid" slurmd; then
      log "configuration changed; restarting slurmctld and slurmd"
      stop_pidfile "$run_dir/slurmd.pid" slurmd
      stop_pidfile "$run_dir/slurmctld.pid" slurmctld
    fi
  fi
}

start_munge() {
  pid_alive "$munge_pidfile" munged && return 0
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    # 1 KiB of randomness; `mungekey` does the same where it exists.
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  chmod 0400 /etc/munge/munge.key
  # munged daemonizes once its socket is ready; it runs as the munge user it is meant for.
  runuser -u munge -- /usr/sbin/munged --pid-file="$munge_pidfile" </dev/null
  munge -n </dev/null | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

wait_idle() {
  local state=""
  for _ in $(seq 120); do
    state="$(node_state)"
    case "$state" in
      idle | mixed | allocated | completing) return 0 ;;
      down* | drain* | fail*)
        # A node left DOWN by an unclean stop: bring it back.
        scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  log "node $node is not idle after 60 s (state: ${state:-unknown}); logs in $state_dir"
  tail -n 20 "$state_dir/slurmctld.log" "$state_dir/slurmd.log" >&2 || true
  return 1
}

cmd_start() {
  local t0=$SECONDS
  if command -v sinfo >/dev/null 2>&1 && is_up; then
    log "already running (node $node, partition $partition)"
    return 0
  fi
  [[ "$(id -u)" == 0 ]] || die "start needs root (it installs packages and starts daemons)"
  install_packages
  write_config
  start_munge
  if ! pid_alive "$run_dir/slurmctld.pid" slurmctld; then
    slurmctld </dev/null || die "slurmctld did not start; see $state_dir/slurmctld.log"
  fi
  if ! pid_alive "$run_dir/slurmd.pid" slurmd; then
    slurmd -N "$node" </dev/null || die "slurmd did not start; see $state_dir/slurmd.log"
  fi
  wait_idle
  log "up in $((SECONDS - t0)) s: node $node, partition $partition, SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
  if pid_alive "$run_dir/slurmctld.pid" slurmctld; then
    # Jobs' slurmstepd processes outlive slurmd: end the jobs first.
    local jobs
    jobs="$(timeout 10 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)"
    if [[ -n "${jobs// /}" ]]; then
      log "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 50); do
        [[ -z "$(timeout 10 squeue -h -o '%A' 2>/dev/null)" ]] && break
        sleep 0.2
      done
    fi
  fi
  stop_pidfile "$run_dir/slurmd.pid" slurmd
  stop_pidfile "$run_dir/slurmctld.pid" slurmctld
  stop_pidfile "$munge_pidfile" munged
  log "stopped"
}

cmd_status() {
  local name pidfile up=0
  for name in munged slurmctld slurmd; do
    case "$name" in
      munged) pidfile="$munge_pidfile" ;;
      *) pidfile="$run_dir/$name.pid" ;;
    esac
    if pid_alive "$pidfile" "$name"; then
      echo "$name: running (pid $(cat "$pidfile"))"
    else
      echo "$name: stopped"
    fi
  done
  if command -v sinfo >/dev/null 2>&1 && is_up; then
    sinfo -N -o '%N %P %T %c %m' || true
    up=1
  fi
  [[ $up == 1 ]] || { echo "cluster: down"; return 3; }
  echo "cluster: up"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

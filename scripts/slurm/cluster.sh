#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the `slurm` tests and for trying launcher=submitit_slurm
# before a real cluster. Debian/Ubuntu, as root; works without systemd (containers, CI).
#
#   scripts/slurm/cluster.sh start    install the Debian packages if missing, start munged, MariaDB,
#                                     slurmdbd, slurmctld and slurmd, wait until the node is idle
#   scripts/slurm/cluster.sh status   each daemon's pid (from its pid file), then sinfo and squeue
#   scripts/slurm/cluster.sh stop     stop the daemons by their pid files
#
# `start` is idempotent: running daemons are left alone unless the config it writes changed. The node
# gets this machine's CPUs and memory (as slurmd detects them) in one partition, `debug`, the default.
# Accounting (slurmdbd + MariaDB) is on so that `sacct`, which submitit polls, knows every job.
# SLURM_START_TIMEOUT_S (default 90): how long `start` waits for the node to become idle.
set -euo pipefail

NODE=localhost
PARTITION=debug
CONF=/etc/slurm
RUN=/run/slurm
LOGS=/var/log/slurm
SPOOL=/var/lib/slurm
DB_PASSWORD=lrbench-local   # a MariaDB account reachable from 127.0.0.1 only
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server mariadb-client)
# stop order: the daemons that depend on others first
PIDFILES=("$RUN/slurmd.pid" "$RUN/slurmctld.pid" "$RUN/slurmdbd.pid" /run/mysqld/mysqld.pid /run/munge/munged.pid)

say() { echo "[slurm] $*" >&2; }
die() { echo "[slurm] error: $*" >&2; exit 1; }
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {
  local pid
  running "$1" || return 0
  pid=$(cat "$1")
  say "stopping pid $pid ($1)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  die "pid $pid ($1) still running after 10 s"
}

wait_for() {  # tries command...: run command every 0.2 s until it succeeds, at most `tries` times
  local tries=$1; shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} with this system's package manager"
  say "installing ${missing[*]}"
  apt-get update -qq
  # container images forbid postinst from starting services (policy-rc.d): this script starts them
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

make_dirs() {
  # /run is a tmpfs: recreated on every start
  mkdir -p "$RUN" "$LOGS" "$SPOOL/slurmctld" "$SPOOL/slurmd" /run/munge /run/mysqld
  chown slurm:slurm "$RUN" "$LOGS" "$SPOOL" "$SPOOL/slurmctld" "$SPOOL/slurmd"
  chown munge:munge /run/munge
  chown mysql:mysql /run/mysqld
}

config_changed=0
install_if_changed() {  # path mode owner, content on stdin
  local new; new=$(mktemp)
  cat >"$new"
  if cmp -s "$new" "$1"; then rm -f "$new"; return 0; fi
  install -m "$2" -o "$3" -g "$3" "$new" "$1"
  rm -f "$new"
  config_changed=1
  say "wrote $1"
}

write_config() {
  local cpus mem_mb
  cpus=$(nproc)
  # the node's memory exactly as slurmd measures it: more would drain the node ("Low RealMemory")
  mem_mb=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
  [[ -n $mem_mb ]] || mem_mb=$(( $(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
  install_if_changed "$CONF/slurm.conf" 0644 root <<CONF
# written by lrbench scripts/slurm/cluster.sh
ClusterName=lrbench
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups in a container: follow processes through /proc, bind no tasks
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
# memory is not consumed: jobs without --mem share the node instead of each taking all of it
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
JobAcctGatherType=jobacct_gather/linux
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  install_if_changed "$CONF/slurmdbd.conf" 0600 slurm <<CONF
# written by lrbench scripts/slurm/cluster.sh
AuthType=auth/munge
DbdHost=$NODE
SlurmUser=slurm
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
CONF
  if [[ $config_changed == 1 ]]; then  # daemons still running hold the old config
    stop_pidfile "$RUN/slurmd.pid"; stop_pidfile "$RUN/slurmctld.pid"; stop_pidfile "$RUN/slurmdbd.pid"
  fi
}

start_munge() {
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if ! running /run/munge/munged.pid; then
    say "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged
  fi
  wait_for 50 bash -c 'munge -n | unmunge' || die "munge does not answer (see /var/log/munge/munged.log)"
}

start_accounting() {
  if ! mariadb-admin ping >/dev/null 2>&1; then
    say "starting mariadbd"
    # mariadbd stays in the foreground: detach it from this script's session
    setsid nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
      --pid-file=/run/mysqld/mysqld.pid >"$LOGS/mariadbd.log" 2>&1 </dev/null &
    wait_for 150 mariadb-admin ping || die "mariadbd did not start (see $LOGS/mariadbd.log)"
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  if ! running "$RUN/slurmdbd.pid"; then say "starting slurmdbd"; /usr/sbin/slurmdbd; fi
  wait_for 150 sacctmgr -n list cluster || die "slurmdbd does not answer (see $LOGS/slurmdbd.log)"
}

start_slurm() {
  if ! running "$RUN/slurmctld.pid"; then say "starting slurmctld"; /usr/sbin/slurmctld; fi
  wait_for 100 bash -c 'scontrol ping | grep -q UP' || die "slurmctld does not answer (see $LOGS/slurmctld.log)"
  # -N: the node's name in slurm.conf is not this machine's hostname
  if ! running "$RUN/slurmd.pid"; then say "starting slurmd"; /usr/sbin/slurmd -N "$NODE"; fi
}

wait_until_idle() {
  local deadline state
  deadline=$(( $(date +%s) + ${SLURM_START_TIMEOUT_S:-90} ))
  while :; do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
    case $state in
      idle|mixed|allocated|completing) break ;;
      drain*|down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if (( $(date +%s) >= deadline )); then
      tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
      die "node $NODE not idle after ${SLURM_START_TIMEOUT_S:-90} s (state '${state}')"
    fi
    sleep 0.5
  done
  say "up: $(sinfo -h -o '%P %a %D %c CPUs %m MB %T' | tr '\n' ' ')"
}

start() {
  [[ $(id -u) == 0 ]] || die "start needs root (it installs packages and starts system daemons)"
  install_packages
  make_dirs
  write_config
  start_munge
  start_accounting
  start_slurm
  wait_until_idle
}

status() {
  local f
  for f in "${PIDFILES[@]}"; do
    if running "$f"; then echo "up   $(cat "$f") $f"; else echo "down $f"; fi
  done
  if command -v sinfo >/dev/null; then sinfo || true; squeue || true; fi
}

stop() {
  local f
  for f in "${PIDFILES[@]}"; do stop_pidfile "$f"; done
}

case ${1:-} in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A single-node Slurm cluster (munge, slurmctld, slurmd, and for `sacct` slurmdbd on a
# private MariaDB; Debian packages) for the tests that scan on real Slurm (`pytest -m slurm`).
# No systemd, no cgroups.
#
# Usage: .ci/slurm.sh start|stop|status [DIR]
#   DIR (default: .slurm in the repository, git-ignored) holds the configuration, keys,
#   state, logs and pid files. Clients find the cluster through
#       export SLURM_CONF="DIR/slurm.conf"
#   start: installs the packages if missing (root and apt-get needed), writes the files,
#     starts the daemons in the background and waits (bounded) until the node is idle.
#     When Slurm cannot be started it prints "SKIP: <reason>", stops what it started and
#     exits 0: the test then skips, since `sinfo` reports no idle node.
#     Without accounting (SLURM_ACCOUNTING=no, or when slurmdbd cannot start) the cluster
#     runs, but `sacct` does not answer and the tests that need it skip.
#   stop: cancels the jobs, stops the daemons (by their pid files) and removes DIR (only
#     if this script wrote its slurm.conf).
# Both are idempotent.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
action=${1:-}
dir=$(realpath -m "${2:-$repo/.slurm}")
conf=$dir/slurm.conf
export SLURM_CONF=$conf
WAIT_S=60
DB_PORT=16830

log() { echo "slurm.sh: $*"; }

pid_alive() {  # pid_alive FILE: the process named in FILE runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_idle() {
  [ -f "$conf" ] && timeout 10 sinfo -h -o %t 2>/dev/null | grep -qx "idle"
}

runtime_dir() {  # sockets need short paths (108 bytes): a temporary folder for a long DIR
  if [ -s "$dir/runtime-dir" ]; then
    cat "$dir/runtime-dir"
  elif [ ${#dir} -le 60 ]; then
    echo "$dir/run"
  else
    mktemp -d | tee "$dir/runtime-dir"
  fi
}

stop_daemons() {  # stop_daemons PIDFILE...: in this order, each within 10 s
  local pidfile pid
  for pidfile in "$@"; do
    pid_alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$(basename "$pidfile" .pid) ($pid) did not stop in 10 s: killing it"
      kill -9 "$pid" 2>/dev/null
    fi
  done
}

stop() {
  if [ -f "$conf" ] && command -v squeue >/dev/null 2>&1 && pid_alive "$dir/slurmctld.pid"; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    [ -z "${jobs// /}" ] || timeout 10 scancel $jobs 2>/dev/null || true
  fi
  local run=$dir/run
  [ -s "$dir/runtime-dir" ] && run=$(cat "$dir/runtime-dir")
  stop_daemons "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/slurmdbd.pid" "$run/mariadb.pid" \
    "$run/munged.pid"
  [ "$run" = "$dir/run" ] || rm -rf "$run"
  if grep -qs "^# Single-node test cluster written by .ci/slurm.sh" "$conf"; then
    rm -rf "$dir"  # only a folder this script set up
  else
    rmdir "$dir" 2>/dev/null || true
  fi
  log "stopped"
}

skip() {
  log "SKIP: $*"
  for name in slurmctld slurmd slurmdbd; do
    [ -s "$dir/$name.log" ] && { log "last lines of $name.log:"; tail -n 15 "$dir/$name.log"; }
  done
  stop >/dev/null 2>&1
  exit 0
}

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sinfo >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || skip "the Slurm packages are missing and installing them needs root"
  command -v apt-get >/dev/null || skip "the Slurm packages are missing and there is no apt-get"
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  packages=(slurmctld slurmd slurm-client munge)
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
      && apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; } \
    || skip "apt-get could not install ${packages[*]}"
}

accounting() {  # accounting RUNTIME_DIR: MariaDB and slurmdbd; status 1 with a reason if not
  local run=$1
  [ "${SLURM_ACCOUNTING:-yes}" != no ] || { echo "SLURM_ACCOUNTING=no"; return 1; }
  if ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmdbd mariadb-server >/dev/null 2>&1 \
      || { echo "slurmdbd and mariadb-server are missing and cannot be installed"; return 1; }
  fi
  # A private database server: its own data folder, socket and port, root by socket only.
  mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$dir/db" \
    --auth-root-authentication-method=socket >"$dir/mariadb-install.log" 2>&1 \
    || { echo "mariadb-install-db failed: $(tail -n 3 "$dir/mariadb-install.log")"; return 1; }
  mariadbd --no-defaults --user="$(id -un)" --datadir="$dir/db" --socket="$run/mariadb.sock" \
    --port=$DB_PORT --bind-address=127.0.0.1 --pid-file="$run/mariadb.pid" \
    --log-error="$dir/mariadb.log" --skip-log-bin --innodb-buffer-pool-size=32M \
    </dev/null >/dev/null 2>&1 &
  for _ in $(seq "$WAIT_S"); do
    mariadb -S "$run/mariadb.sock" -e "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.5
  done
  mariadb -S "$run/mariadb.sock" -e "CREATE USER slurm@'127.0.0.1' IDENTIFIED BY 'ci';
    GRANT ALL ON slurm_acct_db.* TO slurm@'127.0.0.1';" 2>"$dir/mariadb-grant.log" \
    || { echo "MariaDB did not start: $(tail -n 3 "$dir/mariadb.log" "$dir/mariadb-grant.log")"
      return 1; }
  (umask 077 && cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$run/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=16819
SlurmUser=$(id -un)
PidFile=$dir/slurmdbd.pid
LogFile=$dir/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=ci
StorageLoc=slurm_acct_db
EOF
  )
  slurmdbd || { echo "slurmdbd did not start: $(tail -n 3 "$dir/slurmdbd.log")"; return 1; }
  for _ in $(seq "$WAIT_S"); do
    timeout 10 sacctmgr -n list cluster >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "slurmdbd does not answer: $(tail -n 3 "$dir/slurmdbd.log")"
  return 1
}

write_config() {  # write_config RUNTIME_DIR ACCOUNTING(yes|no)
  local run=$1 host node memory storage="AccountingStorageType=accounting_storage/none"
  host=$(hostname -s)
  # This machine's processors as slurmd sees them; memory: 90 % of it, so that a slightly
  # different figure at registration does not drain the node.
  node=$(slurmd -C 2>/dev/null | head -n 1)
  [[ $node == NodeName=* ]] || skip "'slurmd -C' did not describe this node: $node"
  memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  node=$(sed "s/RealMemory=[0-9]*/RealMemory=$((memory * 9 / 10))/" <<<"$node")
  mkdir -p "$dir/state" "$run/spool"
  if [ "$2" = yes ]; then
    # AccountingStoragePass: the munge socket for talking to slurmdbd
    storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=16819
AccountingStoragePass=$run/munge.socket"
  fi
  cat >"$conf" <<EOF
# Single-node test cluster written by .ci/slurm.sh; everything lives in this folder.
ClusterName=filterstats-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$run/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$run/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups: processes tracked through /proc, no task binding, no resource sampling.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$storage
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=30 State=UP
EOF
}

start() {
  if pid_alive "$dir/slurmctld.pid" && pid_alive "$dir/slurmd.pid" && node_idle; then
    log "already running; export SLURM_CONF=$conf"
    exit 0
  fi
  stop >/dev/null 2>&1  # leftovers of a failed start
  mkdir -p "$dir" && install
  local run
  run=$(runtime_dir)
  mkdir -p "$run" && chmod 755 "$run"
  write_config "$run" yes

  # munge: a fresh key; --force since it runs as root
  (umask 077 && head -c 1024 /dev/urandom >"$dir/munge.key")
  munged --force --key-file="$dir/munge.key" --socket="$run/munge.socket" \
    --pid-file="$run/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" \
    || skip "munged did not start: $(tail -n 3 "$dir/munged.log" 2>/dev/null)"
  munge -S "$run/munge.socket" -n 2>/dev/null | unmunge -S "$run/munge.socket" >/dev/null 2>&1 \
    || skip "munge cannot encode and decode a credential: $(tail -n 3 "$dir/munged.log")"

  local with_accounting=yes reason
  if ! reason=$(accounting "$run"); then
    log "no accounting ('sacct' will not answer): $reason"
    with_accounting=no
    stop_daemons "$dir/slurmdbd.pid" "$run/mariadb.pid"
  fi
  write_config "$run" "$with_accounting"

  slurmctld -f "$conf" || skip "slurmctld did not start"
  slurmd -f "$conf" || skip "slurmd did not start"
  for _ in $(seq "$WAIT_S"); do
    node_idle && break
    sleep 1
  done
  node_idle || skip "the node is not idle after $WAIT_S s: $(sinfo -h -N -o '%N %t %E' 2>&1)"
  # one real job through the scheduler
  out=$(timeout 30 srun -t 1 -N 1 -n 1 hostname 2>&1) \
    || skip "'srun hostname' failed: $out"
  log "running ($(sinfo -h -o '%D node(s), %c CPUs, state %t' 2>/dev/null)," \
    "accounting: $with_accounting); export SLURM_CONF=$conf"
}

case $action in
  start) start ;;
  stop) stop ;;
  status) node_idle && log "idle; export SLURM_CONF=$conf" || log "not running" ;;
  *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
esac

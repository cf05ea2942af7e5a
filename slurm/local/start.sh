#!/bin/bash
# Start a private single-node SLURM (munged + slurmctld + slurmd) whose files all live under <dir>.
#
#   slurm/local/start.sh <dir>        # prints the line to paste: export SLURM_CONF=<dir>/slurm.conf
#   slurm/local/stop.sh <dir>         # stops it again
#
# Needs slurm-wlm and munge (apt install slurm-wlm munge). It never reads or writes /etc/slurm or the
# system munge socket: the key, the socket, the config, state, spool and logs are all under <dir>, and the
# ports are free ones (override with CTLD_PORT=... SLURMD_PORT=...). Run it as the user who submits jobs.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: slurm/local/start.sh <dir>   (a folder for the key, config, state and logs)" >&2
  exit 2
fi
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found: install slurm-wlm and munge (apt install slurm-wlm munge)" >&2; exit 2; }
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="$(mkdir -p "$1" && cd "$1" && pwd)"
mkdir -p "$DIR"/{munge,state,spool,log,run}
chmod 700 "$DIR/munge"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export DIR
export HOST="$(hostname -s)" NODE="$(hostname -s)" USER_NAME="$(id -un)"
export CTLD_PORT="${CTLD_PORT:-$(free_port)}" SLURMD_PORT="${SLURMD_PORT:-$(free_port)}"
cpus="$(nproc)"; export CPUS="${CPUS:-$(( cpus > 4 ? cpus : 4 ))}"
export MEM_MB="${MEM_MB:-$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))}"

# the config: every ${NAME} of the template replaced by the variable of that name
conf="$(cat "$HERE/slurm.conf")"
for name in DIR HOST NODE USER_NAME CTLD_PORT SLURMD_PORT CPUS MEM_MB; do
  conf="${conf//\$\{$name\}/${!name}}"
done
printf '%s\n' "$conf" > "$DIR/slurm.conf"
: > "$DIR/plugstack.conf"
export SLURM_CONF="$DIR/slurm.conf"

[ -f "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"; }
munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
  --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
slurmctld -c          # -c: a clean start (no state from an earlier run of this folder)
slurmd
for _ in $(seq 60); do
  if [ "$(sinfo -h -o %t 2>/dev/null)" = "idle" ]; then
    echo "export SLURM_CONF=$DIR/slurm.conf"
    exit 0
  fi
  sleep 0.5
done
echo "error: the local SLURM did not become idle within 30 s; see $DIR/log/slurmctld.log and slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1

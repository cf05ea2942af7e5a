#!/bin/bash
# Stop the private SLURM that slurm/local/start.sh <dir> started (by the pids it recorded under <dir>/run).
set -uo pipefail
if [ $# -ne 1 ]; then
  echo "usage: slurm/local/stop.sh <dir>   (the folder given to start.sh)" >&2
  exit 2
fi
DIR="$(cd "$1" && pwd)" || exit 2
export SLURM_CONF="$DIR/slurm.conf"
scancel --quiet --user="$(id -un)" 2>/dev/null || true
for name in slurmd slurmctld munged; do
  pidfile="$DIR/run/$name.pid"
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
done
exit 0

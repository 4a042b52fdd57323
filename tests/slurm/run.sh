#!/bin/bash
# The shard/merge path on a real Slurm: install Debian's slurmctld, slurmd, slurm-client and
# munge if missing, start them on this machine (one node, loopback only, as root), submit a
# small experiment as a 4-task job array with the merge chained by --dependency=afterok
# (examples/slurm/submit.sh), and check the merged CSVs are byte-identical to an unsharded
# run. Usage: tests/slurm/run.sh [path/to/resprop]   (run by .ci/run)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
resprop=$(realpath "${1:-$repo/target/release/resprop}")
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
work=$(mktemp -d /tmp/resprop-slurm.XXXXXX)
chmod 755 "$work"
node=$(hostname -s)
cleanup() {
    # The daemons of this run only (found by their config path), then munged.
    pkill -f "$work/slurm.conf" 2>/dev/null || true
    for _ in $(seq 10); do pgrep -f "$work/slurm.conf" >/dev/null || break; sleep 0.5; done
    pkill -9 -f "$work/slurm.conf" 2>/dev/null || true
    [ -n "${munge_pid:-}" ] && kill "$munge_pid" 2>/dev/null || true
}
trap cleanup EXIT

# munge: a fresh key, the daemon under the munge user, its socket in the work folder.
mkdir -p "$work/munge"
chown munge:munge "$work/munge"
[ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || create-munge-key -f >/dev/null; }
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
runuser -u munge -- munged --socket="$work/munge/socket" --pid-file="$work/munge/pid" \
    --log-file="$work/munge/log" --seed-file="$work/munge/seed" --force
munge_pid=$(cat "$work/munge/pid")

mkdir -p "$work/spool/ctld" "$work/spool/d" "$work/log"
cat > "$work/slurm.conf" <<CONF
ClusterName=resprop
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket=$work/munge/socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/spool/ctld
SlurmdSpoolDir=$work/spool/d
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$work/slurm.conf"
slurmctld -f "$work/slurm.conf"
slurmd -f "$work/slurm.conf"
for _ in $(seq 60); do
    sinfo -h -o %t 2>/dev/null | grep -q idle && break
    sleep 1
done
sinfo -h -o %t | grep -q idle || { echo "slurm: the node did not come up"; tail -20 "$work/log/"*; exit 1; }

# A small experiment: 8 profile cells.
cat > "$work/tiny.toml" <<'SPEC'
name = "tiny"
claim = "Sharded on Slurm."
seed = 3
batch = 4
charts = ["grad_ratio"]
[net]
units = 6
width = 8
[grid]
placements = ["original", "full-preact"]
shortcuts = ["identity", "scale:0.5"]
replicates = [0, 1]
SPEC
cd "$work"
"$resprop" run tiny.toml --out whole >/dev/null
read -r array merge < <(RESPROP="$resprop" "$repo/examples/slurm/submit.sh" tiny.toml 4 sharded plots)
echo "slurm: array job $array (4 tasks), merge job $merge"
for _ in $(seq 300); do
    [ -z "$(squeue -h -j "$array,$merge" 2>/dev/null)" ] && break
    sleep 1
done
state=$(sacct -n -X -j "$merge" -o State 2>/dev/null | tr -d ' ' || true)
if [ ! -f sharded/tiny/profile.csv ]; then
    echo "slurm: no merged result (merge job state: ${state:-unknown})"
    cat resprop-*.out 2>/dev/null | tail -20
    exit 1
fi
cmp whole/tiny/profile.csv sharded/tiny/profile.csv
cmp whole/tiny/spec.toml sharded/tiny/spec.toml
[ -f plots/tiny_grad_ratio.png ]
shards=$(ls resprop-shard-*.out | wc -l)
[ "$shards" -eq 4 ] || { echo "slurm: $shards shard logs, expected 4"; exit 1; }
echo "slurm: 4 shards merged, byte-identical to the unsharded run"

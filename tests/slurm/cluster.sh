#!/usr/bin/env bash
# A one-node Slurm cluster on this host for tests (root): slurmctld + slurmd + munged.
#
#   tests/slurm/cluster.sh install        # apt-get install slurm-wlm munge (if missing)
#   tests/slurm/cluster.sh start DIR      # config, state, logs and pid files under DIR
#   tests/slurm/cluster.sh stop DIR       # stop the daemons started by `start DIR`, wait until gone
#
# The node line comes from `slurmd -C` (this host's cores and memory). There is no
# slurmdbd: finished jobs are recorded by jobcomp/filetxt in DIR/jobcomp.log (start
# and end time of every job), and cgroups are not used, so it runs in containers.
# Partitions: `debug` (the default, no time limit) and `short` (1 min), where a job that
# asks for more pends forever with reason PartitionTimeLimit, as on real clusters.
set -euo pipefail

cmd=${1:?usage: cluster.sh install | start DIR | stop DIR}

if [[ $cmd == install ]]; then
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
    fi
    exit 0
fi

dir=$(realpath -m "${2:?usage: cluster.sh $cmd DIR}")
export SLURM_CONF=$dir/slurm.conf

stop_pidfile() {  # stop_pidfile FILE: TERM the process it names, wait up to 30 s, then KILL
    local pid
    [[ -s $1 ]] || return 0
    pid=$(cat "$1")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

if [[ $cmd == stop ]]; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munged.pid"
    exit 0
fi

[[ $cmd == start ]] || { echo "unknown command $cmd (install | start DIR | stop DIR)" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "cluster.sh start needs root (daemons run as root)" >&2; exit 1; }
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
node=$(slurmd -C | head -1)
host=$(hostname -s)
cat > "$SLURM_CONF" <<CONF
ClusterName=pibench-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
KillWait=5
MinJobAge=600
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL MaxTime=1 State=UP
CONF
sed -i "s/^NodeName=[^ ]*/NodeName=$host/" "$SLURM_CONF"

# munged with Debian's paths (the key is made when the package is installed)
install -d -o munge -g munge -m 0755 /run/munge
runuser -u munge -- /usr/sbin/munged
cp /run/munge/munged.pid "$dir/munged.pid"
slurmctld
slurmd
for _ in $(seq 60); do
    if [[ $(sinfo -h -p debug -o %T 2>/dev/null) == idle ]]; then
        echo "slurm up: $(sinfo -h -p debug -o '%n %c CPUs %m MB')"
        exit 0
    fi
    sleep 1
done
echo "the slurm node did not become idle in 60 s; logs: $dir/slurmctld.log, $dir/slurmd.log" >&2
exit 1

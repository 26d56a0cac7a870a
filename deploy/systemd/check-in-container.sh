#!/usr/bin/env bash
# Run both units under a real systemd (in a container made from the ReHealth image) and a DP
# study through them: provision a one-site federation, start rehealth-coordinator and
# rehealth-node as the units say, run the study as the service account, stop both, and check
# that each stopped cleanly and ran without capabilities, with no_new_privs and a seccomp filter.
#   bash deploy/systemd/check-in-container.sh [IMAGE]        (IMAGE default rehealth/core:0.1.0)
# Needs Docker and the image (deploy/container/build.sh); the container gets CAP_SYS_ADMIN (for
# systemd's sandboxing), not --privileged. Everything is made under a temporary folder, removed
# at the end with the container.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-rehealth/core:0.1.0}
work=$(mktemp -d)
name=rehealth-systemd-check-$$
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; docker rmi -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
printf 'FROM %s\nUSER root\nRUN apt-get update -q && apt-get install -y -q --no-install-recommends systemd systemd-sysv && rm -rf /var/lib/apt/lists/*\nENTRYPOINT []\nHEALTHCHECK NONE\nCMD ["/lib/systemd/systemd"]\n' "$image" > "$work/Dockerfile"
docker build -q -t "$name" "$work" >/dev/null

export REHEALTH_KEY_PASSPHRASE=systemd-check-passphrase
printf 'name = "systemd-check"\ncoordinator = "coordinator:9093"\n[[sites]]\nname = "insurer_large"\n' > "$work/federation.toml"
run() { docker run --rm -u "$(id -u):$(id -g)" -e REHEALTH_KEY_PASSPHRASE -v "$work:/w" -w /w --entrypoint rehealth "$image" "$@" >/dev/null; }
run federation provision federation.toml --out kits
run synth --sites 1 --scale 0.2 --epsilon 3 --out synth
site="$work/kits/sites/insurer_large"
mkdir -p "$site/data" "$work/kits/coordinator/study"
cp "$work/synth/insurer_large/cohort.csv" "$site/data/"
sed -i 's|^# data_path = "data/cohort.csv"|data_path = "data/cohort.csv"|' "$site/node.toml"
cp "$work/synth/study.toml" "$work/kits/coordinator/study/"

docker run -d --name "$name" --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
  --security-opt apparmor=unconfined --add-host coordinator:127.0.0.1 \
  --tmpfs /run --tmpfs /run/lock --tmpfs /tmp -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
  -v "$work/kits:/kits:ro" -v "$PWD/deploy/systemd:/units:ro" "$name" >/dev/null
inside() { docker exec "$name" bash -c "$1"; }
for _ in $(seq 1 30); do inside 'systemctl is-system-running' 2>/dev/null | grep -qE 'running|degraded' && break; sleep 1; done
inside 'set -e
install -d -o rehealth -g rehealth -m 0700 /var/lib/rehealth/node /var/lib/rehealth/coordinator
cp -a /kits/sites/insurer_large/. /var/lib/rehealth/node/
cp -a /kits/coordinator/. /var/lib/rehealth/coordinator/
chown -R rehealth:rehealth /var/lib/rehealth
chmod 0600 /var/lib/rehealth/node/supernode.key
install -m 0644 /units/rehealth-node.service /units/rehealth-coordinator.service /etc/systemd/system/
systemctl daemon-reload
systemctl enable -q --now rehealth-coordinator rehealth-node'
for _ in $(seq 1 120); do
  inside 'journalctl -u rehealth-node -u rehealth-coordinator' | grep -q 'node running' && break; sleep 1
done
for unit in rehealth-coordinator rehealth-node; do
  pid=$(inside "systemctl show -p MainPID --value $unit")
  inside "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/$pid/status" | tr '\n' ' ' | sed "s/^/$unit: /"; echo
  inside "grep -qE '^NoNewPrivs:\s+1' /proc/$pid/status && grep -qE '^Seccomp:\s+2' /proc/$pid/status && grep -qE '^CapEff:\s+0+$' /proc/$pid/status"
done
start=$(date +%s)
inside "runuser -u rehealth -- env REHEALTH_KEY_PASSPHRASE=$REHEALTH_KEY_PASSPHRASE HOME=/var/lib/rehealth/coordinator \
  /opt/rehealth/bin/rehealth study run --spec /var/lib/rehealth/coordinator/study/study.toml \
  --superlink coordinator:9093 --root-certificates /var/lib/rehealth/coordinator/ca.crt \
  --key /var/lib/rehealth/coordinator/signing/coordinator.key --out /var/lib/rehealth/coordinator/study/result.json" | tail -3
echo "study: $(( $(date +%s) - start )) s"
inside 'systemctl stop rehealth-node rehealth-coordinator
systemctl show rehealth-node rehealth-coordinator -p Id -p Result -p ExecMainStatus | paste -sd" "
test "$(systemctl show rehealth-node -p Result --value)" = success
test "$(systemctl show rehealth-coordinator -p Result --value)" = success'
echo "ok: both units ran hardened under systemd, a study went through them, both stopped cleanly"

#!/usr/bin/env bash
# Set up everything the tests need (from this repository's files and the
# package registries) and run them. Re-running reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # Open MPI 4.1 as production images carry it; iproute2/util-linux for pod sandboxes;
    # containerd, runc and iptables for the real nodes; buildah, debootstrap and a static
    # libc (libc6-dev) to build their images.
    need=()
    for pkg in openmpi-bin libopenmpi-dev iproute2 util-linux containerd runc iptables buildah debootstrap \
               gcc libc6-dev; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# helm (v4 and v3), kubectl, hadolint and the CRD schemas for the chart tests.
scripts/install-test-tools.sh
# The real control plane (etcd, kube-apiserver, controller-manager, scheduler,
# LWS, kwok; kubelet, kube-proxy and CNI plugins for the real nodes) built from
# Go modules once, cached in .cache/cluster.
bash cluster/build.sh
# The images the real nodes run (the pod sandbox and this project's, CPU
# variant), rebuilt only when what goes into them changed.
if [ "$(id -u)" = 0 ]; then bash cluster/image.sh; fi

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"

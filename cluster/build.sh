#!/usr/bin/env bash
# Build (once) the real Kubernetes control plane used by tests/cluster.
#
# Pinned versions (mutually compatible, all build with Go 1.26):
K8S_VERSION=v1.36.3      # kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
LWS_VERSION=v0.9.0       # sigs.k8s.io/lws (built against k8s.io/* v0.36.2)
KWOK_VERSION=v0.8.0      # sigs.k8s.io/kwok (client-go v0.36.1)
ETCD_VERSION=v3.6.8      # go.etcd.io/etcd/server/v3 (what k8s 1.36 tests with). Not Debian's
                         # etcd-server 3.4.23: it lacks RequestWatchProgress (3.4.31+), so every
                         # client-go 0.36 watch-list fails and informers fall back slowly.
CNI_VERSION=v1.10.0      # github.com/containernetworking/plugins: bridge, host-local, loopback, portmap
PROMETHEUS_VERSION=v0.316.0  # github.com/prometheus/prometheus = Prometheus 3.16.0: prometheus and promtool
                             # for tests/monitoring (rules checked and unit-tested, a real scrape of a run)
KUEUE_VERSION=v0.17.0    # sigs.k8s.io/kueue: admission of the chart's groups under quota (tests/cluster)
KEDA_VERSION=v2.21.0     # github.com/kedacore/keda/v2: operator and metrics adapter, the chart's autoscaling
                         # end to end (tests/cluster/realnode)
#
# Output: $CACHE/bin/<name> plus $CACHE/bin/<name>.version (the pin it was built
# from), the CNI plugins in $CACHE/bin/cni/;
# $CACHE/share/{lws,kueue,keda}-crds/*.yaml, $CACHE/share/{lws,kueue}-webhooks.yaml,
# $CACHE/share/kwok-stages/*.yaml.
# A binary whose .version matches its pin is never rebuilt. Builds run niced.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${CLUSTER_CACHE:-$ROOT/.cache/cluster}"
BIN="$CACHE/bin"; SRC="$CACHE/src"; SHARE="$CACHE/share"
mkdir -p "$BIN" "$SRC" "$SHARE"
export GOFLAGS="${GOFLAGS:--buildvcs=false}" GOTOOLCHAIN=local
NICE="nice -n 10"

fresh() { [[ -x "$BIN/$1" && "$(cat "$BIN/$1.version" 2>/dev/null)" == "$2" ]]; }
stamp() { echo "$2" >"$BIN/$1.version"; }
timed() { local t0=$SECONDS; "$@"; echo "build.sh: $* took $((SECONDS - t0))s" >&2; }
modgo() { (cd "$1" && shift && $NICE go "$@"); }  # run go inside a wrapper module
moddir() { go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }  # source of mod@version
wrapper() {  # wrapper <dir> <module path> <version>: a module that requires the target
  mkdir -p "$1"
  [[ -f "$1/go.mod" ]] || printf 'module clusterbuild/%s\n\ngo 1.26.0\n' "$(basename "$1")" >"$1/go.mod"
  modgo "$1" mod edit -require="$2@$3"
}

# --- etcd ------------------------------------------------------------------
build_etcd() {  # a tiny main around etcdmain
  local d="$SRC/etcd"; wrapper "$d" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >"$d/main.go"
  modgo "$d" mod tidy
  modgo "$d" build -ldflags='-s -w' -o "$BIN/etcd" .
  stamp etcd "$ETCD_VERSION"
}
fresh etcd "$ETCD_VERSION" || timed build_etcd

# --- Kubernetes ----------------------------------------------------------
build_k8s() {
  local d="$SRC/kubernetes" v=${K8S_VERSION#v}; wrapper "$d" k8s.io/kubernetes "$K8S_VERSION"
  local gomod; gomod=$(cd "$d" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # k8s.io/kubernetes replaces each staging module with ./staging/src/...: pin v0.X.Y instead
  local m; for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod"); do
    modgo "$d" mod edit -replace="$m=$m@v0.${v#1.}"
  done
  local pkgs=() b; for b in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  modgo "$d" get "${pkgs[@]/%/@$K8S_VERSION}"
  local major=${v%%.*} minor=${v#*.} X; minor=${minor%%.*}
  local ld="-s -w"; for X in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $X.gitVersion=$K8S_VERSION -X $X.gitMajor=$major -X $X.gitMinor=$minor"
    ld+=" -X $X.gitTreeState=clean -X $X.gitCommit=0000000000000000000000000000000000000000"
    ld+=" -X $X.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  modgo "$d" build -ldflags="$ld" -o "$BIN/" "${pkgs[@]}"
  for b in "$@"; do stamp "$b" "$K8S_VERSION"; done
}
todo=(); for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  fresh "$b" "$K8S_VERSION" || todo+=("$b")
done
(( ${#todo[@]} == 0 )) || timed build_k8s "${todo[@]}"

# --- LWS controller and its CRDs -------------------------------------------
build_lws() {
  local d="$SRC/lws"; wrapper "$d" sigs.k8s.io/lws "$LWS_VERSION"
  modgo "$d" get "sigs.k8s.io/lws/cmd@$LWS_VERSION"
  modgo "$d" build -ldflags='-s -w' -o "$BIN/lws-controller" sigs.k8s.io/lws/cmd
  stamp lws-controller "$LWS_VERSION"
}
fresh lws-controller "$LWS_VERSION" || timed build_lws
lwsdir=$(moddir "sigs.k8s.io/lws@$LWS_VERSION")
mkdir -p "$SHARE/lws-crds" && cp -f "$lwsdir"/config/crd/bases/*.yaml "$SHARE/lws-crds/"
cp -f "$lwsdir"/config/webhook/manifests.yaml "$SHARE/lws-webhooks.yaml"

# --- kwok and its stage files ----------------------------------------------
build_kwok() {
  GOBIN="$BIN" $NICE go install -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  stamp kwok "$KWOK_VERSION"
}
fresh kwok "$KWOK_VERSION" || timed build_kwok
kwokdir=$(moddir "sigs.k8s.io/kwok@$KWOK_VERSION")
mkdir -p "$SHARE/kwok-stages"
cp -f "$kwokdir"/kustomize/stage/node/fast/node-initialize.yaml \
  "$kwokdir"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
  "$kwokdir"/kustomize/stage/pod/fast/pod-*.yaml "$SHARE/kwok-stages/"
chmod -R u+w "$SHARE"  # copies of read-only module files

# --- CNI plugins for the real nodes' pod network ------------------------------
build_cni() {
  local p; mkdir -p "$BIN/cni"
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    GOBIN="$BIN/cni" $NICE go install -ldflags="-s -w" "github.com/containernetworking/plugins/plugins/$p@$CNI_VERSION"
  done
  stamp cni "$CNI_VERSION"
}
[[ "$(cat "$BIN/cni.version" 2>/dev/null)" == "$CNI_VERSION" ]] || timed build_cni

# --- Prometheus and promtool (tests/monitoring) -------------------------------
build_prometheus() {  # go install of both commands; the module's go.mod pins every dependency
  local dir version X=github.com/prometheus/common/version
  dir=$(moddir "github.com/prometheus/prometheus@$PROMETHEUS_VERSION"); version=$(cat "$dir/VERSION")
  # remove_all_sd: no service discovery but static and file (the tests scrape static targets), so
  # none of the cloud SDKs or the Kubernetes client is compiled. No builtinassets: no web UI; the
  # HTTP API is all the tests use.
  GOBIN="$BIN" $NICE go install -tags remove_all_sd \
    -ldflags="-s -w -X $X.Version=$version -X $X.Revision=$PROMETHEUS_VERSION -X $X.Branch=module -X $X.BuildUser=build.sh" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  stamp prometheus "$PROMETHEUS_VERSION"; stamp promtool "$PROMETHEUS_VERSION"
}
{ fresh prometheus "$PROMETHEUS_VERSION" && fresh promtool "$PROMETHEUS_VERSION"; } || timed build_prometheus

# --- Kueue (tests/cluster/test_chart_kueue.py) --------------------------------
build_kueue() {  # go install: the module's go.mod pins every dependency
  GOBIN="$BIN" $NICE go install -ldflags="-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  stamp kueue "$KUEUE_VERSION"
}
fresh kueue "$KUEUE_VERSION" || timed build_kueue
kueuedir=$(moddir "sigs.k8s.io/kueue@$KUEUE_VERSION")
mkdir -p "$SHARE/kueue-crds"
cp -f "$kueuedir"/config/components/crd/bases/*.yaml "$SHARE/kueue-crds/"
cp -f "$kueuedir"/config/components/webhook/manifests.yaml "$SHARE/kueue-webhooks.yaml"

# --- KEDA (tests/cluster/realnode/test_autoscaling.py) -------------------------
build_keda() {  # built in a copy of the module: go install refuses its go.mod's replace and exclude
  local d="$SRC/keda"; rm -rf "$d"
  cp -r "$(moddir "github.com/kedacore/keda/v2@$KEDA_VERSION")" "$d"; chmod -R u+w "$d"
  modgo "$d" build -ldflags="-s -w" -o "$BIN/keda-operator" ./cmd/operator
  modgo "$d" build -ldflags="-s -w" -o "$BIN/keda-adapter" ./cmd/adapter
  stamp keda-operator "$KEDA_VERSION"; stamp keda-adapter "$KEDA_VERSION"
}
{ fresh keda-operator "$KEDA_VERSION" && fresh keda-adapter "$KEDA_VERSION"; } || timed build_keda
kedadir=$(moddir "github.com/kedacore/keda/v2@$KEDA_VERSION")
mkdir -p "$SHARE/keda-crds"
cp -f "$kedadir"/config/crd/bases/*.yaml "$SHARE/keda-crds/"
chmod -R u+w "$SHARE"

echo "build.sh: ready in $BIN"; (cd "$BIN" && for f in *.version; do echo "  ${f%.version}: $(cat "$f")"; done)

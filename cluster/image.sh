#!/usr/bin/env bash
# Build (once) the two images the real-node tests run, with no registry and no
# daemon: the pod sandbox image (cluster/pause/pause.c, static) and the
# project's image (triton_trt-llm.containerfile with VARIANT=cpu) on a Debian
# root filesystem made here by debootstrap. buildah builds them (chroot
# isolation, layers cached in $CACHE/buildah); packages inside the build come
# through this machine's own apt sources and pip settings and CA certificates.
#
# Output, in $CACHE/images: pause.tar and lws-triton.tar (docker-archive, for
# `ctr images import`), each with a .ref file holding the image reference. The
# project image's tag is a hash of what goes into it, so an unchanged tree is
# never rebuilt and a changed one always is.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${CLUSTER_CACHE:-$ROOT/.cache/cluster}"
OUT="$CACHE/images"
WORK="$CACHE/image-work"
BASE_REF=localhost/lws-test-debian:base   # the debootstrap root filesystem as an image
STORE=(--root "$CACHE/buildah/storage" --runroot "$CACHE/buildah/run" --storage-driver overlay)
mkdir -p "$OUT" "$WORK"

fail() { echo "image.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || fail "$1 not found: install Debian's $2 (scripts/test.sh does, as root)"; }
step() {  # step <name> <command...>: time it, and name it if it fails
  local name=$1 t0=$SECONDS; shift
  "$@" || fail "step '$name' failed (its output is above)"
  echo "image.sh: $name took $((SECONDS - t0))s" >&2
}
bah() { buildah "${STORE[@]}" "$@"; }
fresh() { [[ -f "$OUT/$1.tar" && "$(cat "$OUT/$1.ref" 2>/dev/null)" == "$2" ]]; }
export_archive() {  # export_archive <name> <ref>: docker-archive for ctr, then the .ref that marks it fresh
  rm -f "$OUT/$1.tar" "$OUT/$1.ref"
  bah push -q "$2" "docker-archive:$OUT/$1.tar:$2" && echo "$2" >"$OUT/$1.ref"
}

[[ $(id -u) == 0 ]] || fail "needs root (debootstrap, buildah storage)"
need gcc gcc; need buildah buildah; need debootstrap debootstrap

# --- the sandbox image -------------------------------------------------------
pause_ref="localhost/lws-test-pause:$(sha256sum "$ROOT/cluster/pause/pause.c" | cut -c1-12)"
build_pause() {
  gcc -static -O2 -Wall -Werror -o "$WORK/pause" "$ROOT/cluster/pause/pause.c" && strip "$WORK/pause" || return 1
  local c; c=$(bah from scratch) || return 1
  bah copy "$c" "$WORK/pause" /pause && bah config --entrypoint '["/pause"]' "$c" \
    && bah commit -q --rm "$c" "$pause_ref" >/dev/null && export_archive pause "$pause_ref"
}
fresh pause "$pause_ref" || step "pause image" build_pause

# --- the Debian base ---------------------------------------------------------
# The suite and mirror are this machine's own (its os-release and apt sources).
build_base() {
  local suite mirror
  suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
  mirror=$(apt-cache policy | awk -v s="$suite/main" '$3 == s && $4 ~ /amd64|all/ {print $2; exit}')
  [[ -n $suite && -n $mirror ]] || { echo "no Debian suite/mirror in this machine's apt sources" >&2; return 1; }
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase "$suite" "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; return 1; }
  tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" . && rm -rf "$WORK/rootfs"
  local c; c=$(bah from scratch) || return 1
  bah add "$c" "$WORK/rootfs.tar" / && bah config --cmd /bin/bash "$c" \
    && bah commit -q --rm "$c" "$BASE_REF" >/dev/null && rm -f "$WORK/rootfs.tar"
}
bah inspect --type image "$BASE_REF" >/dev/null 2>&1 || step "debootstrap base" build_base

# --- the project image -------------------------------------------------------
inputs() {  # every file the containerfile copies, and the containerfile itself
  (cd "$ROOT" && find triton_trt-llm.containerfile pyproject.toml README.md server.py launcher kubessh \
    -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum)
}
image_ref="localhost/lws-triton:cpu-$(inputs | sha256sum | cut -c1-12)"
build_project() {
  # pip inside the build trusts what this machine trusts and uses its index
  local pipconf="$WORK/pip.conf" key value
  printf '[global]\ncert = /run/host-certs/ca-certificates.crt\n' >"$pipconf"
  for key in index-url extra-index-url; do
    value=$(pip config get "global.$key" 2>/dev/null) && printf '%s = %s\n' "$key" "$value" >>"$pipconf"
  done
  bah bud --layers --format docker --isolation chroot --network host -q \
    -v /etc/ssl/certs:/run/host-certs:ro -v "$pipconf:/etc/pip.conf:ro" \
    --build-arg VARIANT=cpu --build-arg CPU_BASE_IMAGE="$BASE_REF" \
    -f "$ROOT/triton_trt-llm.containerfile" -t "$image_ref" "$ROOT" >/dev/null \
    && export_archive lws-triton "$image_ref"
}
fresh lws-triton "$image_ref" || step "project image ($image_ref)" build_project

echo "image.sh: ready in $OUT"
for f in "$OUT"/*.ref; do echo "  $(basename "$f" .ref): $(cat "$f") ($(du -m "${f%.ref}.tar" | cut -f1) MiB)"; done

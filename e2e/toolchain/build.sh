#!/usr/bin/env bash
# Builds the real Kubernetes control plane and Helm from source (Go module proxy; no prebuilt
# binary is downloaded) into a cache keyed by version, and prints the bin directory.
#
#   e2e/toolchain/build.sh            # build what is missing; a second run is instant
#   K8S_TOOLCHAIN_CACHE=DIR ...       # cache root (default ~/.cache/etcdstore-toolchain)
#
# Pinned here: Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)
# at the release that k8s/go.mod requires, Helm v4 and h2spec. The cache key holds every
# version and the Go version, so a change of any builds afresh beside the old one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/k8s/go.mod")
HELM_VERSION=v4.3.2
H2SPEC_VERSION=v2.2.1+incompatible
GO_VERSION=$(go env GOVERSION)
cache=${K8S_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstore-toolchain}
bin="$cache/k8s-$K8S_VERSION-helm-$HELM_VERSION-h2spec-$H2SPEC_VERSION-$GO_VERSION/bin"
mkdir -p "$bin"

log() { echo "toolchain: $*" >&2; }

k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
missing=()
for c in "${k8s_cmds[@]}"; do [ -x "$bin/$c" ] || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "building Kubernetes $K8S_VERSION: ${missing[*]} (the first build takes many minutes)"
    start=$SECONDS
    minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    pkg=k8s.io/component-base/version
    ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    tmp=$(mktemp -d "$bin/.build.XXXXXX")
    (cd "$here/k8s" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
        $(printf 'k8s.io/kubernetes/cmd/%s ' "${missing[@]}"))
    for c in "${missing[@]}"; do mv "$tmp/$c" "$bin/$c"; done
    rmdir "$tmp"
    log "Kubernetes built in $((SECONDS - start)) s"
fi

install_module() { # name module@version [ldflags]
    local name=$1 mod=$2 ldflags="-s -w ${3:-}"
    [ -x "$bin/$name" ] && return
    log "building $name from $mod"
    local start=$SECONDS tmp
    tmp=$(mktemp -d "$bin/.build.XXXXXX")
    CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-trimpath go install -ldflags "$ldflags" "$mod"
    mv "$tmp/$name" "$bin/$name"
    rmdir "$tmp"
    log "$name built in $((SECONDS - start)) s"
}
install_module helm "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
install_module h2spec "github.com/summerwind/h2spec/cmd/h2spec@$H2SPEC_VERSION"

echo "$bin"

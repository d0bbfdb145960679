#!/usr/bin/env bash
# Build the project's Go-based tools from source into $REPO/.tools/bin/.
#
#   tools/build.sh [daprd|sentry|placement|vault|kustomize|crds|kube|kube-apiserver|etcd|kubectl|dapr|all]...
#                  (default: all = daprd sentry placement vault kustomize crds kube)
#
#   daprd      slim Dapr sidecar runtime (tools/daprd, github.com/dapr/dapr)
#   sentry     Dapr's CA (github.com/dapr/dapr/cmd/sentry): mTLS between local sidecars
#   placement  Dapr's actor placement service (github.com/dapr/dapr/cmd/placement)
#   vault      HashiCorp Vault server    (tools/vault, github.com/hashicorp/vault)
#   kustomize  renders k8s/ for the k8s tests (tools/kustomize, sigs.k8s.io/kustomize/kustomize/v5)
#   crds       CRD schemas of Dapr, Istio, KEDA, prometheus-operator into .tools/crds/
#   kube       = kube-apiserver etcd kubectl (the k8s tests' real API server):
#   kube-apiserver  (tools/kube-apiserver, k8s.io/kubernetes/cmd/kube-apiserver)
#   etcd            (tools/etcd, go.etcd.io/etcd/server/v3/etcdmain)
#   kubectl         (tools/kubectl, k8s.io/kubectl/pkg/cmd)
#   dapr       Dapr CLI                  (tools/dapr-cli, github.com/dapr/cli); not
#              part of `all`: the module proxy does not serve its source (tools/dapr-cli/go.mod)
#
# Needs only Go (>= the `go` line of each wrapper's go.mod) and the Go module
# proxy. Versions are pinned in tools/versions.env. Idempotent: each binary
# gets a stamp file .tools/bin/.<name>.version (name, version and a sha256 of
# the wrapper's go.mod/go.sum/*.go, the build flags and the Go version); when
# the stamp matches and the binary exists nothing is rebuilt.
#
# Environment:
#   TOOLS_BIN_DIR     output directory        (default: $REPO/.tools/bin)
#   TOOLS_BUILD_JOBS  go build -p             (default: 2)
#   TOOLS_FORCE=1     rebuild even if up to date
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$TOOLS_DIR/.." && pwd)
BIN_DIR=${TOOLS_BIN_DIR:-$REPO/.tools/bin}
JOBS=${TOOLS_BUILD_JOBS:-2}
FORCE=${TOOLS_FORCE:-0}

# shellcheck source=versions.env
. "$TOOLS_DIR/versions.env"

export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
# Static, pure-Go binaries (as upstream releases); no C compiler needed.
export CGO_ENABLED=0

die() {
	echo "tools/build.sh: error: $*" >&2
	exit 1
}

usage() {
	sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

command -v go >/dev/null 2>&1 || die "'go' not found in PATH; install Go (see the go line of tools/*/go.mod for the minimum version)"
GO_VERSION=$(go env GOVERSION)

# Fail early, with a clear message, if the wrapper's go.mod needs a newer Go
# than the installed one (GOTOOLCHAIN=local forbids downloading a toolchain).
check_go_version() {
	local dir=$1 req have
	req=$(awk '$1 == "go" { print $2; exit }' "$dir/go.mod")
	have=${GO_VERSION#go}
	have=${have%% *}
	if [[ -n $req && "$(printf '%s\n%s\n' "$req" "$have" | sort -V | head -n1)" != "$req" ]]; then
		die "$(basename "$dir")/go.mod requires Go >= $req but $GO_VERSION is installed (GOTOOLCHAIN=local)"
	fi
}

# The version in versions.env must be the one required by the wrapper's go.mod.
check_pin() {
	local dir=$1 module=$2 version=$3
	if ! grep -Eq "^[[:space:]]*(require[[:space:]]+)?${module//./\\.}[[:space:]]+v${version//./\\.}([[:space:]]|$)" "$dir/go.mod"; then
		die "$dir/go.mod does not require $module v$version (pinned in tools/versions.env); update one of them"
	fi
}

# stamp NAME VERSION DIR FLAGS... -> one line identifying the build inputs.
stamp() {
	local name=$1 version=$2 dir=$3
	shift 3
	local sum f files=(go.mod)
	[[ -f $dir/go.sum ]] && files+=(go.sum)
	for f in "$dir"/*.go; do
		[[ -e $f ]] && files+=("${f##*/}")
	done
	sum=$(
		{
			(cd "$dir" && sha256sum "${files[@]}")
			printf '%s\n' "$GO_VERSION" "$@"
		} | sha256sum | cut -d' ' -f1
	)
	printf '%s %s sha256:%s\n' "$name" "$version" "$sum"
}

# build NAME VERSION DIR PACKAGE LDFLAGS [EXTRA_STAMP_INPUT]
build() {
	local name=$1 version=$2 dir=$3 pkg=$4 ldflags=$5 extra=${6:-}
	local out="$BIN_DIR/$name" stampfile="$BIN_DIR/.$name.version"
	local flags=(-p "$JOBS" -trimpath -ldflags "-s -w $ldflags")

	check_go_version "$dir"
	mkdir -p "$BIN_DIR"

	if [[ $FORCE != 1 && -x $out && -f $stampfile ]] &&
		[[ "$(cat "$stampfile")" == "$(stamp "$name" "$version" "$dir" "CGO_ENABLED=$CGO_ENABLED" "${flags[@]}" "$pkg" "$extra")" ]]; then
		echo "$name $version up to date"
		return 0
	fi

	echo "building $name $version (first build takes several minutes)..."
	local start=$SECONDS log tmp="$out.tmp.$$"
	log=$(mktemp)
	# shellcheck disable=SC2064
	trap "rm -f '$tmp' '$log'" EXIT
	if ! (cd "$dir" && go build "${flags[@]}" -o "$tmp" "$pkg") 2>&1 | tee "$log" >&2; then
		if grep -q '403 Forbidden' "$log"; then
			echo "tools/build.sh: the Go module proxy refused (403) a module version $name needs; see the lines above" >&2
		fi
		die "building $name $version failed"
	fi
	mv -f "$tmp" "$out"
	rm -f "$log"
	trap - EXIT
	# Stamp computed after the build: with -mod=mod go may have filled in go.sum.
	stamp "$name" "$version" "$dir" "CGO_ENABLED=$CGO_ENABLED" "${flags[@]}" "$pkg" "$extra" >"$stampfile"
	echo "built $out ($name $version) in $((SECONDS - start))s, $(du -h "$out" | cut -f1)"
}

build_daprd() {
	local dir="$TOOLS_DIR/daprd"
	check_pin "$dir" github.com/dapr/dapr "$DAPR_VERSION"
	build daprd "$DAPR_VERSION" "$dir" . \
		"-X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_VERSION -X github.com/dapr/dapr/pkg/buildinfo.gitversion=v$DAPR_VERSION -X github.com/dapr/dapr/pkg/buildinfo.gitcommit=$DAPR_GIT_COMMIT"
}

# Dapr's certificate authority, from the same module graph as daprd: the local stack
# runs it so that daprd-to-daprd calls use mTLS and the access lists (Configuration
# accessControl) know each caller's SPIFFE identity, as in Kubernetes.
build_sentry() {
	local dir="$TOOLS_DIR/daprd"
	check_pin "$dir" github.com/dapr/dapr "$DAPR_VERSION"
	build sentry "$DAPR_VERSION" "$dir" github.com/dapr/dapr/cmd/sentry \
		"-X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_VERSION -X github.com/dapr/dapr/pkg/buildinfo.gitversion=v$DAPR_VERSION -X github.com/dapr/dapr/pkg/buildinfo.gitcommit=$DAPR_GIT_COMMIT"
}

# Dapr's actor placement service, same module graph: it spreads the actors of the
# inference replicas (sessions pinned to a replica, see inference/actor_host.py).
build_placement() {
	local dir="$TOOLS_DIR/daprd"
	check_pin "$dir" github.com/dapr/dapr "$DAPR_VERSION"
	build placement "$DAPR_VERSION" "$dir" github.com/dapr/dapr/cmd/placement \
		"-X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_VERSION -X github.com/dapr/dapr/pkg/buildinfo.gitversion=v$DAPR_VERSION -X github.com/dapr/dapr/pkg/buildinfo.gitcommit=$DAPR_GIT_COMMIT"
}

VAULT_SDK_SRC="$REPO/.tools/src/vault-sdk"
VAULT_SDK_DESC="github.com/hashicorp/vault/sdk v$VAULT_SDK_VERSION, RestorePolicy from v$VAULT_SDK_RESTOREPOLICY_FROM, ActivationFunc(ctx, req)"

# tools/vault/go.mod replaces github.com/hashicorp/vault/sdk with
# .tools/src/vault-sdk: the published sdk v$VAULT_SDK_VERSION with the two API
# differences of vault 1.21.x's (unpublished) in-repo sdk applied. See the
# comment in tools/vault/go.mod.
prepare_vault_sdk() {
	local marker="$VAULT_SDK_SRC/.prepared"
	if [[ -f $marker && "$(cat "$marker")" == "$VAULT_SDK_DESC" ]]; then
		return 0
	fi
	echo "preparing $VAULT_SDK_SRC ($VAULT_SDK_DESC)"
	local modcache base restore_from tmpd
	modcache=$(go env GOMODCACHE)
	tmpd=$(mktemp -d)
	(cd "$tmpd" && go mod download "github.com/hashicorp/vault/sdk@v$VAULT_SDK_VERSION" \
		"github.com/hashicorp/vault/sdk@v$VAULT_SDK_RESTOREPOLICY_FROM") ||
		die "could not download github.com/hashicorp/vault/sdk"
	rmdir "$tmpd"
	base="$modcache/github.com/hashicorp/vault/sdk@v$VAULT_SDK_VERSION"
	restore_from="$modcache/github.com/hashicorp/vault/sdk@v$VAULT_SDK_RESTOREPOLICY_FROM"

	rm -rf "$VAULT_SDK_SRC"
	mkdir -p "$(dirname "$VAULT_SDK_SRC")"
	cp -R "$base" "$VAULT_SDK_SRC"
	chmod -R u+w "$VAULT_SDK_SRC"
	cp "$restore_from/helper/keysutil/lock_manager.go" "$VAULT_SDK_SRC/helper/keysutil/lock_manager.go"
	sed -i.orig 's/ActivationFunc func(context.Context, \*logical.Request, string) error/ActivationFunc func(context.Context, *logical.Request) error/' \
		"$VAULT_SDK_SRC/framework/backend.go"
	rm -f "$VAULT_SDK_SRC/framework/backend.go.orig"
	grep -q 'ActivationFunc func(context.Context, \*logical.Request) error' "$VAULT_SDK_SRC/framework/backend.go" ||
		die "patching vault sdk framework/backend.go failed"
	grep -q 'force bool) (string, error)' "$VAULT_SDK_SRC/helper/keysutil/lock_manager.go" ||
		die "patching vault sdk helper/keysutil/lock_manager.go failed"
	printf '%s\n' "$VAULT_SDK_DESC" >"$marker"
}

build_vault() {
	local dir="$TOOLS_DIR/vault"
	check_pin "$dir" github.com/hashicorp/vault "$VAULT_VERSION"
	prepare_vault_sdk
	# The version string itself is embedded from vault's version/VERSION file.
	build vault "$VAULT_VERSION" "$dir" github.com/hashicorp/vault \
		"-X github.com/hashicorp/vault/version.BuildDate=$VAULT_BUILD_DATE" "$VAULT_SDK_DESC"
}

build_kustomize() {
	local dir="$TOOLS_DIR/kustomize"
	check_pin "$dir" sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
	# `kustomize version` prints the module version from the build info; no ldflags needed.
	build kustomize "$KUSTOMIZE_VERSION" "$dir" sigs.k8s.io/kustomize/kustomize/v5 ""
}

# -X flags of k8s.io/component-base/version and k8s.io/client-go/pkg/version, as
# kubernetes' hack/lib/version.sh sets them (`kubectl version`, /version).
kube_version_ldflags() {
	local v=$KUBERNETES_VERSION pkg flags=""
	local major=${v%%.*} minor=${v#*.}
	minor=${minor%%.*}
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=v$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$KUBERNETES_BUILD_DATE"
	done
	printf '%s' "${flags# }"
}

build_kube_apiserver() {
	local dir="$TOOLS_DIR/kube-apiserver"
	check_pin "$dir" k8s.io/kubernetes "$KUBERNETES_VERSION"
	# Every k8s.io/* staging module must be replaced by its v0.x.y release.
	if grep -E '^[[:space:]]*k8s\.io/[a-z-]+ => k8s\.io/[a-z-]+ v' "$dir/go.mod" | grep -vq " v$KUBERNETES_STAGING_VERSION\$"; then
		die "$dir/go.mod replaces a k8s.io staging module by another version than v$KUBERNETES_STAGING_VERSION"
	fi
	build kube-apiserver "$KUBERNETES_VERSION" "$dir" k8s.io/kubernetes/cmd/kube-apiserver "$(kube_version_ldflags)"
}

build_kubectl() {
	local dir="$TOOLS_DIR/kubectl"
	check_pin "$dir" k8s.io/kubectl "$KUBERNETES_STAGING_VERSION"
	build kubectl "$KUBERNETES_STAGING_VERSION" "$dir" . "$(kube_version_ldflags)"
}

build_etcd() {
	local dir="$TOOLS_DIR/etcd"
	check_pin "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
	# The version itself is a constant of go.etcd.io/etcd/api/v3/version.
	build etcd "$ETCD_VERSION" "$dir" . ""
}

build_kube() {
	build_etcd
	build_kube_apiserver
	build_kubectl
}

CRDS_DIR="$REPO/.tools/crds"

# Copy the CRD files the k8s tests validate against out of the modules that publish
# them (downloaded through the module proxy, verified by the checksum database).
fetch_crds() {
	local desc="dapr $DAPR_VERSION keda $KEDA_VERSION prometheus-operator $PROMETHEUS_OPERATOR_VERSION istio-api $ISTIO_API_VERSION"
	local marker="$CRDS_DIR/.version"
	if [[ $FORCE != 1 && -f $marker && "$(cat "$marker")" == "$desc" ]]; then
		echo "crds up to date"
		return 0
	fi
	echo "fetching CRDs ($desc)"
	local tmpd json mod dir
	tmpd=$(mktemp -d)
	rm -rf "$CRDS_DIR"
	mkdir -p "$CRDS_DIR"
	for mod in "github.com/dapr/dapr@v$DAPR_VERSION" \
		"github.com/kedacore/keda/v2@v$KEDA_VERSION" \
		"github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION" \
		"istio.io/api@v$ISTIO_API_VERSION"; do
		json=$(cd "$tmpd" && go mod download -json "$mod") || die "could not download $mod (module proxy)"
		dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json")
		[[ -d $dir ]] || die "no module directory for $mod"
		case $mod in
		github.com/dapr/*) cp "$dir"/charts/dapr/crds/{components,configuration,resiliency,subscription}.yaml "$CRDS_DIR/" ;;
		github.com/kedacore/*) cp "$dir"/config/crd/bases/keda.sh_{scaledobjects,triggerauthentications}.yaml "$CRDS_DIR/" ;;
		github.com/prometheus-operator/*)
			cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,podmonitors,prometheusrules}.yaml "$CRDS_DIR/"
			;;
		istio.io/*) cp "$dir/kubernetes/customresourcedefinitions.gen.yaml" "$CRDS_DIR/istio.yaml" ;;
		esac
	done
	rmdir "$tmpd"
	chmod -R u+w "$CRDS_DIR"
	printf '%s\n' "$desc" >"$marker"
	echo "CRDs in $CRDS_DIR"
}

build_dapr_cli() {
	local dir="$TOOLS_DIR/dapr-cli"
	check_pin "$dir" github.com/dapr/cli "$DAPR_CLI_VERSION"
	build dapr "$DAPR_CLI_VERSION" "$dir" github.com/dapr/cli \
		"-X main.version=$DAPR_CLI_VERSION -X main.apiVersion=$DAPR_CLI_API_VERSION"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(all)

for t in "${targets[@]}"; do
	if [[ $t == -h || $t == --help || $t == help ]]; then
		usage
		exit 0
	fi
done

# Serialise concurrent invocations (2-core machines; same output files).
if command -v flock >/dev/null 2>&1; then
	mkdir -p "$BIN_DIR"
	exec 9>"$BIN_DIR/.build.lock"
	if ! flock -n 9; then
		echo "waiting for another tools/build.sh to finish..."
		flock 9
	fi
fi

for t in "${targets[@]}"; do
	case $t in
	daprd) build_daprd ;;
	sentry) build_sentry ;;
	placement) build_placement ;;
	vault) build_vault ;;
	kustomize) build_kustomize ;;
	crds) fetch_crds ;;
	kube) build_kube ;;
	kube-apiserver) build_kube_apiserver ;;
	etcd) build_etcd ;;
	kubectl) build_kubectl ;;
	dapr | dapr-cli) build_dapr_cli ;;
	all)
		build_daprd
		build_sentry
		build_placement
		build_vault
		build_kustomize
		fetch_crds
		build_kube
		;;
	*)
		usage >&2
		die "unknown target '$t'"
		;;
	esac
done

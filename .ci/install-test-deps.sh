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
  curl               # fetches the pinned pebble below
  chromium           # headless browser: the read-only UI tests (driven over DevTools) and the TLS tests' certificate check
  libnss3-tools      # certutil: trust pebble's root in Chromium's NSS database
  fonts-dejavu-core  # text in Chromium's screenshot
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-test-deps: must run as root (apt-get install ${PACKAGES[*]})" >&2
  exit 1
fi

# The ACME test server of the TLS tests (with pebble-challtestsrv, its DNS stub), from Debian's
# next release: it needs certificate profiles (pebble 2.7+). Like Let's Encrypt's shortlived
# profile, pebble 2.10's profiles issue IP certificates with no subject CN; Debian 12's and 13's
# pebble (2.4, 2.6) put the IP address in the CN, which certbot (5.8.0) takes for a DNS name and
# then fails on ("is an IP address", certbot issue #10773): the test would fail where Let's
# Encrypt works. Pinned by version and checksum; fetched from the Debian mirror's pool.
PEBBLE_VERSION=2.10.0+ds1-2
declare -A PEBBLE_SHA256=(
  [amd64]=b9a3a3920143f1a6fc568dfa88247be22cafa96c845fe62938c08982a15df315
  [arm64]=0364a75c5a47a963b88125ce1ec69869d1af0aacd1062926476b8d2929289364
)
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done
pebble_installed=$(dpkg-query -W -f='${db:Status-Status} ${Version}' pebble 2>/dev/null || true)

if [[ ${#missing[@]} -eq 0 && $pebble_installed == "installed $PEBBLE_VERSION" ]]; then
  echo "install-test-deps: all present (${#PACKAGES[@]} packages and pebble $PEBBLE_VERSION)"
  exit 0
fi

echo "install-test-deps: installing ${missing[*]:-}${missing[*]:+ }(pebble: want $PEBBLE_VERSION, have ${pebble_installed:-none})"
export DEBIAN_FRONTEND=noninteractive
# Another apt (a parallel bed's install, unattended-upgrades) may hold the lock: wait for it.
apt_wait=(-o DPkg::Lock::Timeout=600)
if [[ ${#missing[@]} -gt 0 ]]; then
  apt-get "${apt_wait[@]}" update -qq
  apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ $pebble_installed != "installed $PEBBLE_VERSION" ]]; then
  arch=$(dpkg --print-architecture)
  sum=${PEBBLE_SHA256[$arch]:-}
  if [[ -z $sum ]]; then
    echo "install-test-deps: no pinned pebble $PEBBLE_VERSION for architecture $arch (amd64, arm64)" >&2
    exit 1
  fi
  deb_dir=$(mktemp -d)
  deb="$deb_dir/pebble_${PEBBLE_VERSION}_${arch}.deb"
  url="$DEBIAN_MIRROR/pool/main/p/pebble/pebble_${PEBBLE_VERSION}_${arch}.deb"
  echo "install-test-deps: pebble $PEBBLE_VERSION from $url"
  curl -fsS --retry 3 -o "$deb" "$url"
  if ! echo "$sum  $deb" | sha256sum --check --quiet; then
    echo "install-test-deps: $url does not have the pinned checksum $sum" >&2
    exit 1
  fi
  apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends "$deb"
  rm -rf "$deb_dir"
fi
echo "install-test-deps: done"

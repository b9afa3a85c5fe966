#!/usr/bin/env bash
# Provisions one controller VM of the Vagrantfile (Debian 12, as root): Node 20
# from nodejs.org (checksum verified), peercopy built from the checkout synced
# to /vagrant, nbd-client with the kernel's nbd module loaded (/dev/nbd0 …
# /dev/nbd3), fio and e2fsprogs, and an admin token in /etc/peercopy. Safe to
# run again (`vagrant provision`).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

NODE_MAJOR=20
PREFIX=/opt/peercopy

apt-get update -q
# build-essential and python3: node-gyp builds peercopy's native addon.
apt-get install -y -q --no-install-recommends \
  ca-certificates curl xz-utils rsync build-essential python3 \
  nbd-client fio e2fsprogs kmod util-linux

# Node 20, unless this major version is already installed.
if [[ "$(node --version 2>/dev/null || true)" != v${NODE_MAJOR}.* ]]; then
  case "$(dpkg --print-architecture)" in
    amd64) arch=x64 ;;
    arm64) arch=arm64 ;;
    *) echo "provision: no Node.js build for $(dpkg --print-architecture)" >&2; exit 1 ;;
  esac
  base="https://nodejs.org/dist/latest-v${NODE_MAJOR}.x"
  work=$(mktemp -d)
  curl -fsSL "$base/SHASUMS256.txt" -o "$work/SHASUMS256.txt"
  file=$(awk -v a="linux-${arch}.tar.xz" '$2 ~ a"$" { print $2 }' "$work/SHASUMS256.txt")
  [[ -n "$file" ]] || { echo "provision: no linux-${arch}.tar.xz in $base" >&2; exit 1; }
  curl -fsSL "$base/$file" -o "$work/$file"
  (cd "$work" && grep " $file\$" SHASUMS256.txt | sha256sum -c --quiet -)
  tar -xJf "$work/$file" -C /usr/local --strip-components=1 --no-same-owner
  rm -rf "$work"
fi

# peercopy: the synced checkout, built in its own directory so that a later
# `vagrant rsync` does not disturb the installed build.
mkdir -p "$PREFIX"
rsync -a --delete --exclude=.git/ --exclude=node_modules/ --exclude=dist/ \
  --exclude=native/build/ --exclude=.cache/ --exclude=var/ /vagrant/ "$PREFIX/"
(cd "$PREFIX" && npm ci --no-audit --no-fund --loglevel=error)
# The CLI runs through its own first line (#!/usr/bin/env -S node FLAGS): node's flags live there.
chmod 755 "$PREFIX/dist/src/cli/main.js"
ln -sf "$PREFIX/dist/src/cli/main.js" /usr/local/bin/peercopy

# The kernel NBD client: the nbd module at every boot, four devices.
echo "options nbd nbds_max=4" >/etc/modprobe.d/peercopy-nbd.conf
echo nbd >/etc/modules-load.d/peercopy-nbd.conf
modprobe nbd nbds_max=4
[[ -b /dev/nbd0 ]] || { echo "provision: /dev/nbd0 is missing after modprobe nbd" >&2; exit 1; }

# The images, and the admin token the controllers' actions need (promote,
# demote …): one per VM, given to both the controller and the commands.
mkdir -p /var/lib/peercopy
install -d -m 700 /etc/peercopy
if [[ ! -s /etc/peercopy/admin.token ]]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >/etc/peercopy/admin.token)
  echo >>/etc/peercopy/admin.token
fi

echo "provision: $(hostname): node $(node --version), peercopy $(node -p "require('$PREFIX/package.json').version"), $(nbd-client --version 2>&1 | head -n 1), $(fio --version)"

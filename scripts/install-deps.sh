#!/usr/bin/env bash
# Installs the real NBD peers and tools that peercopy's tests and benchmarks
# drive (Debian 12). Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
# nbdinfo, nbdcopy and nbdfuse come from libnbd-bin, nbdsh from python3-libnbd,
# qemu-img/qemu-io/qemu-nbd from qemu-utils, qemu-storage-daemon from
# qemu-system-common, losetup from mount, fusermount3 from fuse3.
apt-get install -y \
  nbdkit libnbd-bin python3-libnbd fio qemu-utils qemu-system-common \
  e2fsprogs fuse3 util-linux mount diffutils curl
# The VM failover experiment (scripts/vm-experiment) and `vagrant validate`.
apt-get install -y \
  qemu-system-x86 busybox-static nbd-client kmod xz-utils
apt-get install -y --no-install-recommends vagrant vagrant-libvirt

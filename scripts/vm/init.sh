#!/bin/busybox sh
# The experiment guest's /init. The host says what to do on the kernel command
# line (pc.mode, pc.disk, …) and reads lines starting with "PCVM " from the
# serial console. The disk is the kernel NBD client's /dev/nbd0 (reached through
# qemu's user networking, guestfwd 10.0.2.100:10809) or qemu's own NBD-backed
# virtio disk /dev/vda.
/bin/busybox --install -s /bin
# busybox runs its own applet of a name (mke2fs, nbd-client) before PATH:
# the real programs are called by their full paths.
export PATH=/usr/sbin:/sbin:/usr/bin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

say() { echo "PCVM $*"; }
bye() {
  say "END $1"
  sync
  reboot -f
}
fail() {
  say "FAIL $*"
  bye 1
}
arg() { sed -n "s/.*pc\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }

MODE=$(arg mode)
DISK=$(arg disk)
BATCHES=$(arg batches)
PER=$(arg per)
EXPORT=$(arg export)

for m in $(cat /modules); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done
say BOOTED "$(cut -d' ' -f1 /proc/uptime)"

up() { cut -d' ' -f1 /proc/uptime; }
net() {
  ip link set lo up
  ip link set eth0 up || fail "no eth0"
  ip addr add 10.0.2.15/24 dev eth0
}

# pc.mode=attach (an initramfs with node and peercopy): the peercopy CLI
# attaches the export itself, which must take the kernel NBD client (the nbd
# module is loaded, nbd-client is on PATH); then an attach to the connected
# device and one to a missing export, ext4 and files, a detach while mounted,
# and the real detach. Every command's exit code, stdout and stderr, and each
# device's state, go to the host, which judges them and checks the image.
if [ "$MODE" = attach ]; then
  net
  t=$(up)
  node -e 0 || fail "node does not start"
  say NODE "$(node --version)" "$t" "$(up)"
  # pc STEP ARGS…: peercopy ARGS…, reported as OUT and ERR lines, then RAN STEP EXIT START END.
  pc() {
    step=$1
    shift
    t=$(up)
    peercopy "$@" >"/tmp/$step.out" 2>"/tmp/$step.err"
    rc=$?
    sed "s/^/PCVM OUT $step /" "/tmp/$step.out"
    sed "s/^/PCVM ERR $step /" "/tmp/$step.err"
    say RAN "$step" "$rc" "$t" "$(up)"
    return $rc
  }
  # state LABEL nbdN: STATE LABEL nbdN connected|free SECTORS (the kernel's pid file marks a connection).
  state() {
    c=free
    [ -e "/sys/block/$2/pid" ] && c=connected
    say STATE "$1" "$2" "$c" "$(cat "/sys/block/$2/size")"
  }
  URI="nbd://10.0.2.100:10809/$EXPORT"
  pc attach attach "$URI" || fail "peercopy attach"
  D=$(cat /tmp/attach.out)
  N=${D#/dev/}
  [ -b "$D" ] || fail "peercopy attach printed no block device: $D"
  state attached "$N"
  pc list detach --list
  pc again attach "$URI" --device "$D"
  state again "$N"
  pc missing attach "nbd://10.0.2.100:10809/missing"
  state missing nbd1
  /sbin/mke2fs -q -t ext4 "$D" || fail mke2fs
  mount -t ext4 "$D" /mnt || fail mount
  i=0
  while [ "$i" -lt "$PER" ]; do
    dd if=/dev/urandom of="/mnt/f$i" bs=$((1000 + i * 7919)) count=1 2>/dev/null || fail "write f$i"
    i=$((i + 1))
  done
  dd if=/dev/urandom of=/mnt/big bs=65536 count=32 2>/dev/null || fail "write big"
  sync || fail sync
  sha256sum /mnt/big /mnt/f* | while read -r sum name; do say FILE "${name#/mnt/}" "$sum"; done
  pc busy detach "$D"
  state busy "$N"
  umount /mnt || fail umount
  pc detach detach "$D"
  state detached "$N"
  pc after detach --list
  bye 0
fi

if [ "$DISK" = nbd ]; then
  net
  /usr/sbin/nbd-client 10.0.2.100 10809 /dev/nbd0 -N "$EXPORT" -b 4096 >/tmp/nbd.log 2>&1 ||
    fail "nbd-client: $(tr '\n' ' ' </tmp/nbd.log)"
  D=/dev/nbd0
else
  D=/dev/vda
fi
[ -b "$D" ] || fail "no $D"
say ATTACHED "$D" "$(cat /sys/block/${D#/dev/}/size)"

case "$MODE" in
write)
  # A fresh filesystem, then batches of files: each batch is synced and only
  # then reported, so every file the host hears of is on stable storage. The
  # writes go on after the last reported batch until the host stops the guest.
  /sbin/mke2fs -q -t ext4 -E lazy_itable_init=1,lazy_journal_init=1 "$D" || fail mke2fs
  mount -t ext4 "$D" /mnt || fail mount
  say MKFS "$(cut -d' ' -f1 /proc/uptime)"
  b=0
  while :; do
    i=0
    while [ "$i" -lt "$PER" ]; do
      dd if=/dev/urandom of="/mnt/b$b-f$i" bs=$((1024 + (b * 131 + i * 977) % 60000)) count=1 2>/dev/null ||
        fail "write b$b-f$i"
      i=$((i + 1))
    done
    sync || fail sync
    sha256sum /mnt/b$b-f* | while read -r sum name; do say FILE "${name#/mnt/}" "$sum"; done
    say SYNCED "$b"
    b=$((b + 1))
    # Past the asked-for batches, keep writing (the workload the failover cuts).
    [ "$b" -ge "$BATCHES" ] && say WORKLOAD
  done
  ;;
check)
  # Mounting replays the journal (the filesystem was cut off mid-workload),
  # then every file is summed, a new one written, and after umount e2fsck -fn
  # must find nothing.
  mount -t ext4 "$D" /mnt || fail "mount after failover"
  say MOUNTED "$(cut -d' ' -f1 /proc/uptime)"
  for f in /mnt/b*-f*; do
    [ -f "$f" ] && say SUM "${f#/mnt/}" "$(sha256sum "$f" | cut -d' ' -f1)"
  done
  dd if=/dev/urandom of=/mnt/after-failover bs=65536 count=16 2>/dev/null || fail "new write"
  sync || fail "sync after failover"
  NEW=$(sha256sum /mnt/after-failover | cut -d' ' -f1)
  umount /mnt || fail umount
  echo 3 >/proc/sys/vm/drop_caches
  mount -t ext4 -o ro "$D" /mnt || fail "remount"
  [ "$(sha256sum /mnt/after-failover | cut -d' ' -f1)" = "$NEW" ] || fail "new write reads back wrong"
  umount /mnt || fail umount
  say NEWWRITE ok "$NEW"
  /sbin/e2fsck -fn "$D" >/tmp/fsck.log 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || sed 's/^/PCVM FSCKLOG /' /tmp/fsck.log
  say FSCK "$rc"
  [ "$DISK" = nbd ] && /usr/sbin/nbd-client -d /dev/nbd0 >/dev/null 2>&1
  bye 0
  ;;
*)
  fail "unknown pc.mode=$MODE"
  ;;
esac

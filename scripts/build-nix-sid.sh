#!/usr/bin/env bash
# Makes the chroot of Debian sid's Nix (nix-bin 2.34) that the end-to-end tests run beside
# bookworm's: debootstrap minbase plus nix-bin (~2 minutes), kept under /opt and reused. The
# tests bind /proc, /dev and /dev/pts into it in a mount namespace of their own; it shares
# loopback with the host. libdbi-perl provides the virtual perl-dbdabi-94 that nix-bin needs
# (debootstrap does not resolve virtual packages).
set -euo pipefail
root=${NIX_SID_ROOT:-/opt/nix-sid}
if [ -x "$root/usr/bin/nix" ]; then
  echo "$root"
  exit 0
fi
tmp="$root.tmp"
rm -rf "$tmp"
# dpkg may report a configure error for nix-bin's daemon setup (systemd units, a group), which
# the tests do not use: the client is checked below instead of debootstrap's status.
debootstrap --variant=minbase --include=nix-bin,libdbi-perl,ca-certificates sid "$tmp" \
  http://deb.debian.org/debian >&2 || echo "build-nix-sid: debootstrap reported errors; checking the client" >&2
version=$(unshare --mount --propagation private --fork -- sh -c \
  'mount --bind /proc "$0/proc" && exec chroot "$0" nix --version' "$tmp")
case "$version" in
  *"Nix) 2."*) ;;
  *) echo "build-nix-sid: no working Nix in $tmp: $version" >&2; exit 1 ;;
esac
mv "$tmp" "$root"
echo "$root"

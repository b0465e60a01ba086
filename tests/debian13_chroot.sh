#!/usr/bin/env bash
# Runs tests/test_slurm.py against Debian 13 (trixie)'s slurm-wlm (SLURM 24.x) from a Debian 12 host,
# in a chroot: SLURM and munge are trixie's own (/usr/bin, /usr/sbin inside the chroot), Python and
# the project's venv are the host's, bind-mounted at their own paths. Made for issue 38 (does the
# live SLURM test hold on SLURM 24.x as on Debian 12's 22.05?); needs root, debootstrap and the
# Debian mirror. Nothing runs under systemd: the test starts and stops its own daemons.
#
#   tests/debian13_chroot.sh create    # debootstrap trixie, install slurm-wlm and munge (once)
#   tests/debian13_chroot.sh mount     # the bind mounts below
#   tests/debian13_chroot.sh test      # tests/test_slurm.py in this worktree, inside the chroot
#   tests/debian13_chroot.sh shell     # a shell there, with the same PATH
#   tests/debian13_chroot.sh umount    # undo `mount` (the chroot stays for the next time)
#
# ROOT (default /srv/trixie) is the chroot, VENV (default: this worktree's .venv, else
# /work/main/.venv) the venv whose python runs the test. The venv's own python is a link to an
# interpreter outside it (pyenv, /usr/local); that interpreter's prefix is mounted too.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="${ROOT:-/srv/trixie}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
VENV="${VENV:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv" || echo /work/main/.venv)}"
# trixie's SLURM tools first; the venv's bin only for python and snakemake, which the test calls
# through sys.executable.
CHROOT_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$VENV/bin"

# The interpreter's prefix (e.g. /root/.pyenv/versions/3.11.7, /usr/local): the venv's python
# links there, and its libpython and standard library live there.
python_prefix() {
    "$VENV/bin/python" -c 'import sys; print(sys.base_prefix)'
}

# Host folders the test needs inside the chroot, at the same paths: the work tree (repo, venv, MNIST
# copy in ../shared/data), the interpreter, the local package index, /tmp (pytest's tmp and the
# cluster lock file, shared with the host so that host and chroot tests do not run two clusters).
host_folders() {
    local work; work="$(cd "$REPO/.." && pwd)"
    printf '%s\n' "$work" "$(python_prefix)" /tmp
    [ -d /opt ] && echo /opt
    # The venv may live outside the work tree (VENV=...).
    case "$VENV" in "$work"/*) ;; *) echo "$VENV" ;; esac
}

create() {
    command -v debootstrap >/dev/null || { echo "no debootstrap: apt-get install -y debootstrap" >&2; exit 1; }
    [ -e "$ROOT/etc/debian_version" ] || debootstrap --variant=minbase trixie "$ROOT" "$MIRROR"
    # No service starts from a package's postinst here: the test starts its own daemons.
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
    chmod +x "$ROOT/usr/sbin/policy-rc.d"
    mount_all
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
    chroot "$ROOT" /usr/sbin/slurmd -V
}

is_mounted() {
    mountpoint -q "$1"
}

mount_one() {  # arguments: mount arguments..., target
    local target="${*: -1}"
    mkdir -p "$target"
    is_mounted "$target" || mount "$@"
}

mount_all() {
    mount_one -t proc proc "$ROOT/proc"
    mount_one -t sysfs sysfs "$ROOT/sys"
    mount_one --bind /dev "$ROOT/dev"
    mount_one --bind /dev/pts "$ROOT/dev/pts"
    mount_one --bind /dev/shm "$ROOT/dev/shm"  # POSIX semaphores (Python's multiprocessing)
    # A private /run: the chroot's munged socket (/run/munge) must not meet a host munged.
    mount_one -t tmpfs tmpfs "$ROOT/run"
    local folder
    while read -r folder; do
        mount_one --bind "$folder" "$ROOT$folder"
    done < <(host_folders)
    # Name resolution for apt and for the node `localhost`.
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    grep -qw localhost "$ROOT/etc/hosts" 2>/dev/null || cp /etc/hosts "$ROOT/etc/hosts"
}

umount_all() {
    # Deepest first, each once; a path not mounted is skipped.
    local target
    mount | awk -v root="$ROOT" '$3 == root || index($3, root "/") == 1 { print $3 }' | sort -r -u |
        while read -r target; do umount "$target"; done
    if mount | grep -q " $ROOT/"; then
        echo "still mounted under $ROOT:" >&2; mount | grep " $ROOT/" >&2; exit 1
    fi
}

in_chroot() {  # arguments: command...
    chroot "$ROOT" env -i HOME=/root LANG=C.UTF-8 PATH="$CHROOT_PATH" TERM="${TERM:-dumb}" "$@"
}

run_test() {
    mount_all
    echo "SLURM in $ROOT: $(in_chroot slurmd -V), Debian $(cat "$ROOT/etc/debian_version"), slurmd: $(in_chroot sh -c 'command -v slurmd')"
    in_chroot sh -c "cd '$REPO' && PYTHONPATH='$REPO/src' '$VENV/bin/python' -m pytest -v -p no:cacheprovider tests/test_slurm.py -rs"
}

case "${1:-}" in
    create) create ;;
    mount) mount_all ;;
    test) run_test ;;
    shell) mount_all; in_chroot bash -c "cd '$REPO' && exec bash" ;;
    umount) umount_all ;;
    *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# System tools git-slicer's features and tests use, from Debian/Ubuntu packages.
#   bubblewrap      the local sandbox VM (the embedded default provider)
#   openssh-server  a real sshd on 127.0.0.1 for the ssh transport tests
#   rsync           a baseline in benchmarks/
#   qemu-system-x86 the qemu provider's VMs (docs/qemu.md)
#   debootstrap     building the qemu provider's guest image (as root)
#   strace          the durability test watches a push's syncfs calls inside the sandbox
# Runs apt-get only for what is missing, and only as root (CI); otherwise it says what to install.
#   bash scripts/install-system-deps.sh            everything (tests, benchmarks)
#   bash scripts/install-system-deps.sh --minimal  only what using git-slicer locally needs (the demo)
set -euo pipefail
packages=(bubblewrap openssh-server openssh-client rsync qemu-system-x86 debootstrap strace)
commands=(bwrap sshd ssh rsync qemu-system-x86_64 debootstrap strace)
if [ "${1:-}" = "--minimal" ]; then
  packages=(bubblewrap)
  commands=(bwrap)
fi
missing=()
for i in "${!packages[@]}"; do
  cmd=${commands[$i]}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${packages[$i]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: not installed: ${missing[*]} (sudo apt-get install ${missing[*]}); related tests will skip" >&2
fi

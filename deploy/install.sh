#!/bin/sh
# Install lorien for a device, a publisher, or both. Idempotent: running it again changes nothing that is
# already right and never overwrites an edited config.
#
#   sudo deploy/install.sh device|publisher|both
#   DESTDIR=/tmp/root deploy/install.sh both     # staged install into a temporary root (no users, no systemctl)
#
# Layout: /opt/lorien/src (a copy of this tree), /opt/lorien/venv, /etc/lorien/*.toml, /var/lib/lorien,
# /srv/lorien/{models,repo} (publisher), units in /etc/systemd/system.
set -eu

ROLE=${1:-}
case "$ROLE" in device|publisher|both) ;; *) echo "usage: $0 device|publisher|both" >&2; exit 2 ;; esac
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
OPT="$DESTDIR/opt/lorien"
say() { echo "install: $*"; }

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lorien needs Python >= 3.11")'

if [ -z "$DESTDIR" ] && ! id lorien >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/lorien --shell /usr/sbin/nologin lorien
    say "created system user lorien"
fi

mkdir -p "$OPT/src"
# the source tree (nginx templates are read from it), without caches, venvs or benchmark data
tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=bench/corpus --exclude=bench/results \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.ruff_cache --exclude=.pytest_cache \
    --exclude=.hypothesis -cf - . | tar -C "$OPT/src" -xf -
if [ ! -x "$OPT/venv/bin/python" ]; then
    "$PYTHON" -m venv "$OPT/venv"
    say "created $OPT/venv"
fi
"$OPT/venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$OPT/src"
say "lorien $("$OPT/venv/bin/lorien" --help >/dev/null && echo installed) in $OPT/venv"

install -d -m 0755 "$DESTDIR/etc/lorien" "$DESTDIR/etc/systemd/system"
install -d -m 0750 "$DESTDIR/var/lib/lorien"
units=""
if [ "$ROLE" != publisher ]; then units="$units lorien-device.service"; fi
if [ "$ROLE" != device ]; then units="$units lorien-publisher.service"; fi
for unit in $units; do
    install -m 0644 "$SRC/deploy/$unit" "$DESTDIR/etc/systemd/system/$unit"
done
if [ "$ROLE" != publisher ]; then
    install -d -m 0750 "$DESTDIR/var/lib/lorien-model"
    install -m 0644 "$SRC/deploy/device.toml.example" "$DESTDIR/etc/lorien/device.toml.example"
    if [ ! -e "$DESTDIR/etc/lorien/device.toml" ]; then
        install -m 0640 "$SRC/deploy/device.toml.example" "$DESTDIR/etc/lorien/device.toml"
        say "wrote /etc/lorien/device.toml: set repo_url, family, model_path and trusted_root (the repository's metadata/1.root.json)"
    fi
fi
if [ "$ROLE" != device ]; then
    install -d -m 0755 "$DESTDIR/srv/lorien/models" "$DESTDIR/srv/lorien/repo"
    if [ ! -e "$DESTDIR/etc/lorien/publisher.key" ]; then
        "$OPT/venv/bin/lorien" keygen --out "$DESTDIR/etc/lorien" --name publisher >/dev/null
        say "made signing key /etc/lorien/publisher.key; the first signed publish makes /srv/lorien/repo/metadata/1.root.json: install it on every device (trusted_root)"
    fi
fi
if [ -z "$DESTDIR" ]; then
    chown -R lorien:lorien /var/lib/lorien
    [ "$ROLE" = device ] || chown lorien:lorien /etc/lorien/publisher.key  # read by the watcher (mode 0600)
    [ "$ROLE" = publisher ] || chown root:lorien /etc/lorien/device.toml  # mode 0640: readable by the service
    [ "$ROLE" = publisher ] || chown lorien:lorien /var/lib/lorien-model
    [ "$ROLE" = device ] || chown -R lorien:lorien /srv/lorien
    if command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload
    fi
    say "next: systemctl enable --now$units"
fi
say "done ($ROLE)"

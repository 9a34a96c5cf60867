#!/bin/sh
# Remove what install.sh installed. Keeps data (/var/lib/lorien, /srv/lorien, /etc/lorien/*.toml) unless
# --purge is given. Idempotent.
set -eu
DESTDIR=${DESTDIR:-}
PURGE=${1:-}
for unit in lorien-device.service lorien-publisher.service; do
    if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now "$unit" 2>/dev/null || true
    fi
    rm -f "$DESTDIR/etc/systemd/system/$unit"
done
[ -z "$DESTDIR" ] && command -v systemctl >/dev/null 2>&1 && systemctl daemon-reload || true
rm -rf "$DESTDIR/opt/lorien"
rm -f "$DESTDIR/etc/lorien/device.toml.example"
if [ "$PURGE" = --purge ]; then
    rm -rf "$DESTDIR/etc/lorien" "$DESTDIR/var/lib/lorien" "$DESTDIR/var/lib/lorien-model" "$DESTDIR/srv/lorien"
    if [ -z "$DESTDIR" ] && id lorien >/dev/null 2>&1; then userdel lorien; fi
fi
echo "uninstall: done${PURGE:+ (purged)}"

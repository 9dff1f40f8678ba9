#!/bin/sh
# CI gate for the .deb and the .rpm (Debian host: needs debhelper, rpm, lintian,
# and the cargo on PATH; vendors crates with `make vendor`).
#  - builds both (make packages), unless CHECK_PACKAGES_NO_BUILD=1,
#  - versions agree: Cargo.toml, debian/changelog, the built packages,
#  - lintian: no errors and no warnings (overrides, with reasons, in
#    debian/peagen-fabric.lintian-overrides),
#  - maintainer scripts create the user and register the units, installing
#    does not enable or start anything, removal stops the spawner and workers,
#  - payload: binaries, units, no peagen-worker@.service template, the worker
#    drop-in dir, sysusers/tmpfiles, polkit rule, config as a conffile /
#    %config(noreplace), man pages, completions, alerts, dashboards,
#  - tests/package/box-install.sh: the .deb installed, run and removed in a
#    real systemd box (root; skip with CHECK_PACKAGES_NO_BOX=1).
set -eu
cd "$(dirname "$0")/.."
fail=0
err() { echo "check-packages: FAIL: $*" >&2; fail=1; }
ok() { echo "check-packages: ok: $*"; }
has() { # what text pattern
    if printf '%s\n' "$2" | grep -Eq -- "$3"; then ok "$1"; else err "$1 (no match for /$3/)"; fi
}
hasnt() {
    if printf '%s\n' "$2" | grep -Eq -- "$3"; then err "$1 (unexpected /$3/)"; else ok "$1"; fi
}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
debver=$(dpkg-parsechangelog -S Version)
[ "$debver" = "$version" ] || err "debian/changelog version $debver != Cargo.toml $version"
if [ "${CHECK_PACKAGES_NO_BUILD:-}" != 1 ]; then
    make packages
fi
deb=$(ls dist/peagen-fabric_"$version"_*.deb 2>/dev/null | head -n1)
rpm=$(ls dist/peagen-fabric-"$version"-*.rpm 2>/dev/null | head -n1)
[ -n "$deb" ] || { err "no dist/peagen-fabric_${version}_*.deb"; exit 1; }
[ -n "$rpm" ] || { err "no dist/peagen-fabric-${version}-*.rpm"; exit 1; }
echo "check-packages: $deb ($(stat -c %s "$deb") bytes), $rpm ($(stat -c %s "$rpm") bytes)"

# ---- .deb ------------------------------------------------------------------
[ "$(dpkg-deb -f "$deb" Version)" = "$version" ] || err "deb version"
lint=$(lintian --fail-on none --display-info --pedantic "$deb" 2>&1 | grep -v 'running with root privileges' || true)
printf '%s\n' "$lint" | sed '/^$/d; s/^/    lintian: /'
if printf '%s\n' "$lint" | grep -Eq '^[EW]: '; then
    err "lintian reports errors or warnings"
else
    ok "lintian: $(printf '%s\n' "$lint" | grep -c '^[IPX]: ' || true) info/pedantic tags, no errors or warnings"
fi

postinst=$(dpkg-deb -I "$deb" postinst 2>/dev/null || true)
prerm=$(dpkg-deb -I "$deb" prerm 2>/dev/null || true)
postrm=$(dpkg-deb -I "$deb" postrm 2>/dev/null || true)
conffiles=$(dpkg-deb -I "$deb" conffiles 2>/dev/null || true)
has "deb postinst creates the system user (systemd-sysusers)" "$postinst" 'systemd-sysusers .*peagen-fabric\.conf'
has "deb postinst creates state dirs (systemd-tmpfiles)" "$postinst" 'systemd-tmpfiles .*--create peagen-fabric\.conf'
has "deb postinst registers peagen-spawnerd.service" "$postinst" "deb-systemd-helper update-state 'peagen-spawnerd\.service'"
has "deb postinst reloads systemd" "$postinst" 'systemctl --system daemon-reload'
# Every `deb-systemd-helper enable` must sit just under a was-enabled test
# (re-creating the admin's own symlinks), never enable a fresh install.
unguarded=$(printf '%s\n' "$postinst" | awk '/was-enabled/ {w=NR} /deb-systemd-helper enable/ && NR - w > 3 {print}')
hasnt "deb postinst does not enable on install (dh_installsystemd --no-enable)" "$unguarded" 'enable'
has "deb postinst restarts only enabled units (deb-systemd-invoke)" "$postinst" "deb-systemd-invoke \\\$_dh_action 'peagen-spawnerd\.service'"
hasnt "deb postinst never restarts the workers slice on upgrade" "$postinst" "deb-systemd-invoke .*peagen-workers\.slice"
has "deb prerm stops the spawner on removal" "$prerm" "deb-systemd-invoke stop 'peagen-spawnerd\.service'"
has "deb prerm stops the workers on removal" "$prerm" "deb-systemd-invoke stop 'peagen-worker@\\*\\.service' peagen-workers\\.slice"
has "deb postrm purges the unit state" "$postrm" "deb-systemd-helper purge 'peagen-spawnerd\.service'"
has "deb: /etc/peagen/peagen.toml is a conffile" "$conffiles" '^/etc/peagen/peagen\.toml$'

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/peagen-pkg.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
dpkg-deb -x "$deb" "$tmp/deb"
debfiles=$(cd "$tmp/deb" && find . \( -type f -o -type l \) | sed 's|^\.||' | sort)
has "deb sysusers file defines user peagen" "$(cat "$tmp/deb/usr/lib/sysusers.d/peagen-fabric.conf" 2>/dev/null)" '^u peagen '
for d in "$tmp/deb/etc/systemd/system/peagen-worker@.service.d"; do
    [ -d "$d" ] && ok "deb ships the worker drop-in directory" || err "deb lacks /etc/systemd/system/peagen-worker@.service.d/"
done

# ---- .rpm ------------------------------------------------------------------
[ "$(rpm -qp --qf '%{VERSION}' "$rpm" 2>/dev/null)" = "$version" ] || err "rpm version"
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
pre=$(printf '%s\n' "$scripts" | sed -n '/^preinstall scriptlet/,/^[a-z]* scriptlet/p')
post=$(printf '%s\n' "$scripts" | sed -n '/^postinstall scriptlet/,/^preuninstall scriptlet/p')
preun=$(printf '%s\n' "$scripts" | sed -n '/^preuninstall scriptlet/,/^postuninstall scriptlet/p')
postun=$(printf '%s\n' "$scripts" | sed -n '/^postuninstall scriptlet/,$p')
has "rpm %pre creates the user before the payload (systemd-sysusers)" "$pre" '^u peagen '
has "rpm %post creates the user (systemd-sysusers)" "$post" 'systemd-sysusers /usr/lib/sysusers.d/peagen-fabric\.conf'
has "rpm %post creates state dirs (systemd-tmpfiles)" "$post" 'systemd-tmpfiles --create /usr/lib/tmpfiles.d/peagen-fabric\.conf'
has "rpm %post registers the unit by preset (not enable)" "$post" 'preset peagen-spawnerd\.service'
hasnt "rpm %post does not enable or start" "$post" 'systemctl[^|]*(enable|start) '
has "rpm %preun stops+disables the spawner on removal" "$preun" 'disable --now peagen-spawnerd\.service'
has "rpm %preun stops the workers on removal" "$preun" "systemctl stop 'peagen-worker@\\*\\.service' peagen-workers\\.slice"
has "rpm %postun restarts the spawner on upgrade" "$postun" 'try-restart peagen-spawnerd\.service'
cfg=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" 2>/dev/null)
has "rpm: peagen.toml is %config(noreplace)" "$cfg" '^c[a-z]*n[a-z]* /etc/peagen/peagen\.toml$'
rpmfiles=$(rpm -qpl "$rpm" 2>/dev/null | sort)
owners=$(rpm -qp --qf '[%{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm" 2>/dev/null)
has "rpm: /var/lib/peagen owned by peagen" "$owners" '^peagen:peagen /var/lib/peagen$'
has "rpm ships a disable preset (preset policy may default to enable)" "$rpmfiles" '^/usr/lib/systemd/system-preset/90-peagen-fabric\.preset$'

# ---- payload of both --------------------------------------------------------
for f in /usr/bin/peagen-spawnerd /usr/bin/peagen-worker /usr/bin/peagenctl \
         @UNIT@/peagen-spawnerd.service @UNIT@/peagen-workers.slice \
         /usr/lib/sysusers.d/peagen-fabric.conf /usr/lib/tmpfiles.d/peagen-fabric.conf \
         /etc/peagen/peagen.toml /usr/share/polkit-1/rules.d/50-peagen-fabric.rules \
         /usr/share/bash-completion/completions/peagenctl @ZSH@/_peagenctl \
         /usr/share/fish/vendor_completions.d/peagenctl.fish \
         @MAN1@/peagenctl.1 @MAN8@/peagen-spawnerd.8 @MAN8@/peagen-worker.8 \
         /usr/share/peagen-fabric/prometheus/peagen-alerts.yml \
         /usr/share/peagen-fabric/grafana/peagen-main.json /usr/share/peagen-fabric/grafana/peagen-cost.json \
         /usr/share/doc/peagen-fabric/operations.md /usr/share/doc/peagen-fabric/examples/10-memory.conf \
         /usr/share/doc/peagen-fabric/examples/peagen.toml; do
    d=$(echo "$f" | sed 's|@UNIT@|/lib/systemd/system|; s|@ZSH@|/usr/share/zsh/vendor-completions|; s|@MAN1@\(.*\)|/usr/share/man/man1\1.gz|; s|@MAN8@\(.*\)|/usr/share/man/man8\1.gz|')
    r=$(echo "$f" | sed 's|@UNIT@|/usr/lib/systemd/system|; s|@ZSH@|/usr/share/zsh/site-functions|; s|@MAN1@|/usr/share/man/man1|; s|@MAN8@|/usr/share/man/man8|')
    printf '%s\n' "$debfiles" | grep -qxF "$d" || err "deb lacks $d"
    printf '%s\n' "$rpmfiles" | grep -Eq "^$r(\\.gz)?\$" || err "rpm lacks $r"
done
for files in "$debfiles" "$rpmfiles"; do
    if printf '%s\n' "$files" | grep -q 'systemd/system/peagen-worker@\.service$'; then
        err "a package ships peagen-worker@.service (would block the transient workers)"
    fi
done
ok "payload of both packages complete, no worker template"

# The shipped config must be valid for the shipped binary.
if "$tmp/deb/usr/bin/peagenctl" config validate --config "$tmp/deb/etc/peagen/peagen.toml"; then
    ok "packaged peagenctl validates the packaged peagen.toml"
else
    err "packaged peagen.toml does not validate (exit $?)"
fi

# End to end: install the .deb in a real systemd box, run it, remove it.
if [ "${CHECK_PACKAGES_NO_BOX:-}" = 1 ]; then
    echo "check-packages: box install test skipped (CHECK_PACKAGES_NO_BOX=1)"
elif tests/package/box-install.sh "$deb"; then
    ok "box install test (tests/package/box-install.sh)"
else
    err "box install test (tests/package/box-install.sh)"
fi
if [ "${CHECK_PACKAGES_NO_BOX:-}" != 1 ]; then
    if tests/package/box-install.sh "$rpm"; then
        ok "box install test of the .rpm (rpm -i --nodeps on the Debian box)"
    else
        err "box install test of the .rpm"
    fi
fi

[ "$fail" -eq 0 ] && echo "check-packages: OK"
exit "$fail"

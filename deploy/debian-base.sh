#!/usr/bin/env bash
# Build a base image from Debian's packages and import it into podman: for a machine that reaches a
# Debian archive but no container registry (the images the Dockerfiles name by default, such as
# python:3.11-slim, are then out of reach). Needs root, mmdebstrap and podman.
#
#   deploy/debian-base.sh python   IMAGE   # Python 3.11 in a venv on PATH: deploy/Dockerfile's BASE
#   deploy/debian-base.sh node     IMAGE   # Node.js and npm: fhir-server/Dockerfile's BASE
#   deploy/debian-base.sh postgres IMAGE   # PostgreSQL, set up at first start as the official image
#                                          # is (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB)
#
# e.g. deploy/debian-base.sh python localhost/als-cds-base:bookworm, then
#      podman build --build-arg BASE=localhost/als-cds-base:bookworm -f deploy/Dockerfile -t als-cds .
#
# The image trusts the certificate authorities this machine adds to Debian's
# (/usr/local/share/ca-certificates), so that RUN steps reach package indexes through the same
# TLS-inspecting proxy, if any, as the machine does. SUITE (default bookworm) and MIRROR (default:
# the machine's own apt sources) choose the Debian release and archive.
set -euo pipefail

flavour=${1:?usage: debian-base.sh python|node|postgres IMAGE}
image=${2:?usage: debian-base.sh python|node|postgres IMAGE}
suite=${SUITE:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)

hooks=(
    --customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share'
    --customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null 2>&1'
    # No apt lists or caches in the image: they are out of date as soon as it is built.
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
)
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
changes=()
case "$flavour" in
    python)
        packages=python3,python3-venv,ca-certificates
        # Debian's python3 has no pip on PATH (PEP 668): a venv gives `python` and `pip` as the
        # official image has them. pip checks TLS against Debian's store, not its own bundle.
        hooks+=(
            --customize-hook='chroot "$1" python3 -m venv /opt/venv'
            --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/opt/venv/pip.conf"'
        )
        path=/opt/venv/bin:$path
        ;;
    node)
        packages=nodejs,npm,ca-certificates
        hooks+=(--customize-hook='echo cafile=/etc/ssl/certs/ca-certificates.crt > "$1/etc/npmrc"')
        ;;
    postgres)
        packages=postgresql,ca-certificates
        # No cluster at install time: the entrypoint makes one in PGDATA at first start.
        hooks+=(
            --essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d"'
            --essential-hook='echo create_main_cluster = false > "$1/etc/postgresql-common/createcluster.d/no-main.conf"'
            --customize-hook="copy-in $here/postgres-entrypoint.sh /usr/local/bin"
            --customize-hook='chmod 0755 "$1/usr/local/bin/postgres-entrypoint.sh"'
            # The release's server programs (initdb, postgres, pg_isready) under one path.
            --customize-hook='chroot "$1" sh -c "ln -s /usr/lib/postgresql/*/bin /usr/local/lib/postgresql"'
        )
        path=/usr/local/lib/postgresql:$path
        changes=(
            --change 'ENV PGDATA=/var/lib/postgresql/data'
            --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]'
            --change 'STOPSIGNAL SIGINT'
            --change 'EXPOSE 5432'
        )
        ;;
    *)
        echo "debian-base.sh: unknown flavour $flavour (python, node or postgres)" >&2
        exit 2
        ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=minbase --include="$packages" "${hooks[@]}" \
    "$suite" "$work/rootfs.tar" ${MIRROR:+"$MIRROR"}
podman import --quiet --change "ENV PATH=$path" "${changes[@]}" "$work/rootfs.tar" "$image" >/dev/null
echo "$image"

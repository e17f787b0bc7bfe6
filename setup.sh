#!/bin/sh
# One-command setup of a vzpy node on Debian 12, as root:
#   system packages, the vzpy Python package, /etc/vz/vz.conf (if missing),
#   the container init binary, and the OS templates (tiny + Debian 12 minimal,
#   the default for `vzctl create`, + for the tests Debian 12 with redis-server,
#   with OpenJDK 17, and with PostgreSQL, MariaDB, nginx, sshd and Xvfb).
# Safe to run again: it skips what is already there.
set -eu
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh must run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
PKGS="rsync openssh-server openssh-client iproute2 mmdebstrap busybox-static \
      gcc libc6-dev tar gzip xz-utils zstd procps util-linux ca-certificates"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
fi

PY=${PYTHON:-python3}
if ! $PY -m pip --version >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends python3-pip python3-venv
fi
# PEP 668 (Debian's own python3) refuses a system-wide pip install unless told.
if $PY -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
    BSP=--break-system-packages
else
    BSP=
fi
$PY -m pip install -q $BSP -e ".[test]"

# ssh sessions and cron have a short PATH: put the tools where they look.
SCRIPTS=$($PY -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for tool in vzctl vzlist vzmigrate vzimage vzpy-template; do
    if [ -x "$SCRIPTS/$tool" ] && [ "$SCRIPTS" != /usr/local/sbin ]; then
        ln -sf "$SCRIPTS/$tool" "/usr/local/sbin/$tool"
    fi
done
mkdir -p /run/sshd

$PY -m vzpy.node init
$PY -c "from vzpy.initbin import init_binary; print('init binary:', init_binary())"

TEMPLATE_DIR=$(sed -n 's/^TEMPLATE="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "${VZ_CONFDIR:-/etc/vz}/vz.conf" | head -n1)
TEMPLATE_DIR=${TEMPLATE_DIR:-/vz/template}
build() {  # name, then vzpy-template build arguments
    name=$1; shift
    if ls "$TEMPLATE_DIR/cache/$name".tar.* >/dev/null 2>&1; then
        echo "template $name: present"
    else
        vzpy-template --template-dir "$TEMPLATE_DIR" build "$@" --name "$name"
    fi
}
build tiny tiny
build debian-12-x86_64-minimal debian
build debian-12-x86_64-redis debian --include redis-server
build debian-12-x86_64-java debian --include openjdk-17-jre-headless
build debian-12-x86_64-apps debian \
    --include postgresql,mariadb-server,nginx-light,openssh-server,xvfb,x11-utils
echo "vzpy node ready"

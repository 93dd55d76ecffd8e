#!/usr/bin/env bash
# run-vm.sh: run one command inside a small QEMU VM whose kernel has kernel TLS.
#
# The kernel here may have no `tls` ULP (setsockopt(TCP_ULP, "tls") gives
# ENOENT). This script boots Debian's stock kernel, which ships tls.ko as a
# module, from an initramfs built on the fly (static busybox, the tls module
# and the crypto modules it uses, and the caller's binaries with their shared
# libraries). It runs COMMAND there and exits with COMMAND's exit status.
#
# Usage: run-vm.sh [--timeout SECONDS] [--mem MB] [--smp N] -- COMMAND [ARGS...]
#
#   Any argument (COMMAND included) that is an absolute path to an executable
#   file on the host is copied into the VM at the same path, with the shared
#   libraries `ldd` lists for it. Other host files and directories go in via
#   VM_FILES. See tests/ktls/README.md.
#
# Environment:
#   VM_FILES     space-separated absolute host paths (files or directories)
#                copied into the VM at the same paths
#   VM_ENV       space-separated variable NAMES passed into the VM with their
#                host values (RUST_BACKTRACE and RUST_LOG pass when set)
#   VM_CWD       directory the command starts in (default: $PWD if it exists
#                in the VM, else /tmp)
#   VM_MODULES   modules to load, in order, with dependencies (default: tls
#                and the AES-GCM, AES-CCM and ChaCha20-Poly1305 crypto modules)
#   VM_ACCEL     auto (default), kvm or tcg
#   VM_APPEND    extra kernel command line
#   VM_SMP       vCPUs (default 2)
#   VM_KEEP=1    keep the work directory (initramfs, console log)
#   VM_COMPRESS  initramfs compressor command, e.g. "gzip -1" (default: none,
#                which boots faster; the guest holds it in RAM either way)
#   VM_KERNEL_IMAGE  auto (default: the unpacked PVH vmlinux when the kernel
#                supports it, which boots faster) or bzimage
#   KTLS_KERNEL_PKG  Debian kernel package (default: whatever is cached, else
#                    what linux-image-amd64 depends on)
#   KTLS_CACHE_DIR   kernel cache (default /var/cache/ringsocks-ktls)
#
# Exit status: COMMAND's status; 124 on timeout; 125 when the VM ended
# without reporting one (harness failure, see the console output).
set -euo pipefail

PROG=run-vm
TIMEOUT=${VM_TIMEOUT:-600}
MEM=${VM_MEM:-2048}
SMP=${VM_SMP:-2}
CACHE=${KTLS_CACHE_DIR:-/var/cache/ringsocks-ktls}
ACCEL=${VM_ACCEL:-auto}
DEFAULT_MODULES="tls aesni-intel ghash-clmulni-intel gcm ghash-generic ctr ccm \
chacha20poly1305 chacha-x86_64 chacha_generic poly1305-x86_64 poly1305_generic"
MODULES=${VM_MODULES:-$DEFAULT_MODULES}
MARKER=RINGSOCKS_VM_EXIT

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 125; }
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

while [ $# -gt 0 ]; do
    case $1 in
        --timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
        --timeout=*) TIMEOUT=${1#*=}; shift ;;
        --mem) [ $# -ge 2 ] || usage; MEM=$2; shift 2 ;;
        --mem=*) MEM=${1#*=}; shift ;;
        --smp) [ $# -ge 2 ] || usage; SMP=$2; shift 2 ;;
        --smp=*) SMP=${1#*=}; shift ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        -*) log "unknown option: $1"; usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
for n in "$TIMEOUT" "$MEM" "$SMP"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: $n"
done
case $ACCEL in auto|kvm|tcg) ;; *) die "VM_ACCEL must be auto, kvm or tcg" ;; esac

START=$SECONDS
WORK=
QPID=
TAILPID=
# shellcheck disable=SC2317  # (reached through the traps)
cleanup() {
    local rc=$?
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill -KILL "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    if [ -n "$TAILPID" ] && kill -0 "$TAILPID" 2>/dev/null; then
        kill "$TAILPID" 2>/dev/null || true
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "${VM_KEEP:-0}" = 1 ]; then
            log "kept work directory $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- host tools
apt_install() {
    [ "$(id -u)" = 0 ] || die "missing packages ($*) and not root to install them"
    log "installing $*"
    local opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@" >&2; then
        apt-get update -q -o DPkg::Lock::Timeout=300 >&2
        DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@" >&2
    fi
}

ensure_tools() {
    local missing=() pair
    for pair in qemu-system-x86_64:qemu-system-x86 cpio:cpio depmod:kmod \
                modprobe:kmod gzip:gzip xz:xz-utils zstd:zstd dpkg-deb:dpkg \
                ldd:libc-bin; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    # The busybox copied into the VM must be the static one.
    if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
        missing+=(busybox-static)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        # shellcheck disable=SC2207
        missing=($(printf '%s\n' "${missing[@]}" | sort -u))
        apt_install "${missing[@]}"
    fi
    if ldd /bin/busybox >/dev/null 2>&1; then
        die "/bin/busybox is not static (install busybox-static)"
    fi
}
export PATH=$PATH:/usr/sbin:/sbin
ensure_tools

# ---------------------------------------------------------------- kernel
mkdir -p "$CACHE"

pick_kernel_pkg() {
    if [ -n "${KTLS_KERNEL_PKG:-}" ]; then
        echo "$KTLS_KERNEL_PKG"; return
    fi
    local cached
    cached=$(find "$CACHE" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' 2>/dev/null \
        | xargs -r -n1 basename | sort -V | tail -n 1)
    if [ -n "$cached" ]; then
        echo "$cached"; return
    fi
    local dep
    dep=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$dep" ]; then
        apt-get update -q -o DPkg::Lock::Timeout=300 >&2
        dep=$(apt-cache depends linux-image-amd64 2>/dev/null \
            | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    [ -n "$dep" ] || die "cannot resolve linux-image-amd64 to a kernel package"
    echo "$dep"
}

KPKG=$(pick_kernel_pkg)
KDIR=$CACHE/$KPKG
cache_ready() {
    [ -f "$KDIR/.complete" ] && { [ -f "$KDIR/vmlinux" ] || [ -f "$KDIR/.no-vmlinux" ]; }
}
# Lock only while the cache is being filled, so runs can go in parallel.
LOCKED=0
if ! cache_ready; then
    exec 9>"$CACHE/.lock"
    flock -w 900 9 || die "could not lock $CACHE/.lock"
    LOCKED=1
fi
if [ ! -f "$KDIR/.complete" ]; then
    log "fetching kernel package $KPKG into $KDIR"
    rm -rf "$KDIR" "$CACHE/.dl"
    mkdir -p "$CACHE/.dl"
    (cd "$CACHE/.dl" && apt-get download -q "$KPKG" >&2 2>/dev/null) || {
        apt-get update -q -o DPkg::Lock::Timeout=300 >&2
        (cd "$CACHE/.dl" && apt-get download -q "$KPKG" >&2)
    } || die "apt-get download $KPKG failed"
    dpkg-deb -x "$CACHE"/.dl/*.deb "$CACHE/.dl/x"
    mkdir -p "$KDIR"
    vmlinuz=$(find "$CACHE/.dl/x/boot" -name 'vmlinuz-*' | head -n 1)
    [ -n "$vmlinuz" ] || die "no vmlinuz in $KPKG"
    mv "$vmlinuz" "$KDIR/vmlinuz"
    cp "$CACHE"/.dl/x/boot/config-* "$KDIR/config" 2>/dev/null || true
    moddir=$(find "$CACHE/.dl/x" -maxdepth 4 -type d -path '*/lib/modules/*' | head -n 1)
    [ -n "$moddir" ] || die "no modules in $KPKG"
    mkdir -p "$KDIR/lib/modules"
    mv "$moddir" "$KDIR/lib/modules/"
    depmod -b "$KDIR" "$(basename "$moddir")"
    rm -rf "$CACHE/.dl"
    touch "$KDIR/.complete"
fi
KVER=$(basename "$(find "$KDIR/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
if [ -z "$KVER" ] || [ ! -f "$KDIR/vmlinuz" ]; then
    die "broken kernel cache $KDIR (delete it)"
fi

# The bzImage decompresses itself in the guest, which takes seconds under
# TCG. A kernel built with CONFIG_PVH boots straight from its ELF vmlinux
# (QEMU finds the PVH note), so unpack that once and prefer it.
extract_vmlinux() {  # bzimage out
    local img=$1 out=$2 magic off dec
    for magic in xz zstd gzip; do
        case $magic in
            xz) off=$(grep -abo $'\xfd7zXZ\x00' "$img" | head -n 1 | cut -d: -f1 || true)
                dec=(xz -dc --single-stream) ;;
            zstd) off=$(grep -abo $'\x28\xb5\x2f\xfd' "$img" | head -n 1 | cut -d: -f1 || true)
                dec=(zstd -dcq) ;;
            gzip) off=$(grep -abo $'\x1f\x8b\x08' "$img" | head -n 1 | cut -d: -f1 || true)
                dec=(gzip -dcq) ;;
        esac
        [ -n "$off" ] || continue
        tail -c +$((off + 1)) "$img" | "${dec[@]}" > "$out.tmp" 2>/dev/null || true
        if is_elf "$out.tmp" && [ "$(stat -c %s "$out.tmp")" -gt 1000000 ]; then
            mv "$out.tmp" "$out"
            return 0
        fi
    done
    rm -f "$out.tmp"
    return 1
}
is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

KIMAGE=$KDIR/vmlinuz
case ${VM_KERNEL_IMAGE:-auto} in
    bzimage) ;;
    auto)
        if [ ! -f "$KDIR/vmlinux" ] && [ ! -f "$KDIR/.no-vmlinux" ]; then
            if grep -q '^CONFIG_PVH=y' "$KDIR/config" 2>/dev/null \
                && extract_vmlinux "$KDIR/vmlinuz" "$KDIR/vmlinux"; then
                :
            else
                touch "$KDIR/.no-vmlinux"
            fi
        fi
        [ -f "$KDIR/vmlinux" ] && KIMAGE=$KDIR/vmlinux ;;
    *) die "VM_KERNEL_IMAGE must be auto or bzimage" ;;
esac
if [ "$LOCKED" = 1 ]; then
    flock -u 9
    exec 9>&-
fi

# ---------------------------------------------------------------- initramfs
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ktls-vm.XXXXXX")
R=$WORK/root

# Copy host path $1 to the same path under $2 (a root directory).
copy_path() {
    local src=$1 root=$2 dst
    dst=$root$src
    mkdir -p "$(dirname "$dst")"
    if [ -d "$src" ]; then
        [ -L "$dst" ] && rm -f "$dst"
        mkdir -p "$dst"
        cp -a "$src/." "$dst/"
    else
        # Never write through a symlink (e.g. a busybox applet link).
        if [ -L "$dst" ] || [ -e "$dst" ]; then rm -rf "$dst"; fi
        cp -L --preserve=mode,timestamps "$src" "$dst"
    fi
}

# Copy an executable and its shared libraries (or a script and its
# interpreter). /bin/sh and busybox stay busybox's.
copy_exe() {
    local exe=$1 root=$2 lib interp
    case $exe in
        /bin/sh|/usr/bin/sh|/bin/busybox|/usr/bin/busybox) return 0 ;;
    esac
    copy_path "$exe" "$root"
    if ! is_elf "$exe"; then
        if [ "$(head -c 2 "$exe")" = '#!' ]; then
            read -r interp _ < <(head -n 1 "$exe" | cut -c3-) || true
            if [[ $interp == /* ]] && [ -f "$interp" ] && [ -x "$interp" ] \
                && [ "$interp" != "$exe" ]; then
                copy_exe "$interp" "$root"
            fi
        fi
        return 0
    fi
    while read -r lib; do
        [ -n "$lib" ] || continue
        [ -e "$root$lib" ] || copy_path "$lib" "$root"
    done < <(ldd "$exe" 2>/dev/null | awk '
        /=> not found/ { print "MISSING " $1 > "/dev/stderr"; next }
        /=>/ && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }')
}

# Root skeleton: busybox and its applet links, mirroring a merged /usr.
make_skeleton() {
    local root=$1 d t
    mkdir -p "$root"/{dev,proc,sys,tmp,run,root,etc,usr/bin,usr/sbin,usr/lib,var/tmp}
    for d in bin sbin lib lib64; do
        if [ -L "/$d" ]; then
            t=$(readlink "/$d")
            mkdir -p "$root/${t#/}"
            ln -s "$t" "$root/$d"
        else
            mkdir -p "$root/$d"
        fi
    done
    cp /bin/busybox "$root/bin/busybox"
    # The other applet links are made by init (`busybox --install -s`), which
    # leaves files copied in from the host in place.
    ln -s busybox "$root/bin/sh"
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    chmod 1777 "$root/tmp" "$root/var/tmp"
}

# Shell-quote for the busybox sh init script.
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

# Uncompressed by default: under TCG the guest needs seconds to gunzip a
# large initramfs (about 8 s for 60 MB) and no time to copy a plain one.
make_cpio() {  # root out
    local -a comp
    read -ra comp <<< "${VM_COMPRESS:-cat}"
    (cd "$1" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | "${comp[@]}" > "$2"
}

# Stage modules (with dependencies) and the insmod order.
stage_modules() {
    local root=$1 m line path rel
    local -a order=()
    local -A seen=()
    for m in $MODULES; do
        if ! out=$(modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" 2>&1); then
            log "warning: module $m not found in $KPKG, skipped"
            continue
        fi
        while read -r line; do
            case $line in
                insmod\ *) path=${line#insmod }; path=${path%% *} ;;
                *) continue ;;
            esac
            [ -n "${seen[$path]:-}" ] && continue
            seen[$path]=1
            order+=("$path")
        done <<< "$out"
    done
    mkdir -p "$root/lib/modules/$KVER" "$root/etc/ringsocks-vm"
    : > "$root/etc/ringsocks-vm/modules"
    for path in "${order[@]}"; do
        rel=${path#"$KDIR"/}
        mkdir -p "$root/$(dirname "$rel")"
        cp "$path" "$root/$rel"
        case $rel in
            *.ko.xz) xz -d "$root/$rel"; rel=${rel%.xz} ;;
            *.ko.zst) zstd -q -d --rm "$root/$rel"; rel=${rel%.zst} ;;
            *.ko.gz) gzip -d "$root/$rel"; rel=${rel%.gz} ;;
        esac
        echo "/$rel" >> "$root/etc/ringsocks-vm/modules"
    done
    cp "$KDIR/lib/modules/$KVER"/modules.{builtin,builtin.modinfo,order} \
        "$root/lib/modules/$KVER/" 2>/dev/null || true
    # modules.dep/alias for busybox modprobe (the kernel's request_module).
    depmod -b "$root" "$KVER" 2>/dev/null || true
}

# ---------------------------------------------------------------- qemu
RUN_STATUS=
qemu_base() {  # accel initrd append...
    local accel=$1 initrd=$2; shift 2
    local cpu=max
    [ "$accel" = kvm ] && cpu=host
    printf '%s\0' qemu-system-x86_64 -machine "pc,accel=$accel" -cpu "$cpu" \
        -m "$MEM" -smp "$SMP" -nodefaults -no-user-config -display none \
        -chardev stdio,id=con0,signal=off -serial chardev:con0 \
        -no-reboot -kernel "$KIMAGE" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 mitigations=off cryptomgr.notests $*"
}

# Run qemu in the background, wait at most $3 seconds and set RUN_STATUS to
# "exited" or "timeout". Console goes to file $4; $5=1 also streams it.
run_qemu() {  # accel initrd timeout logfile stream [append...]
    local accel=$1 initrd=$2 limit=$3 logf=$4 stream=$5; shift 5
    local -a cmd
    mapfile -d '' cmd < <(qemu_base "$accel" "$initrd" "$@")
    : > "$logf"
    "${cmd[@]}" < /dev/null > "$logf" 2>&1 &
    QPID=$!
    if [ "$stream" = 1 ]; then
        tail -n +1 -s 0.2 -f --pid="$QPID" "$logf" | tr -d '\r' &
        TAILPID=$!
    fi
    local deadline=$((SECONDS + limit)) status=exited
    while kill -0 "$QPID" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            status=timeout
            kill -TERM "$QPID" 2>/dev/null || true
            sleep 1
            kill -KILL "$QPID" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$QPID" 2>/dev/null || true
    QPID=
    if [ -n "$TAILPID" ]; then
        wait "$TAILPID" 2>/dev/null || true
        TAILPID=
    fi
    RUN_STATUS=$status
}

# Does KVM boot a stock kernel here? (/dev/kvm can exist and still not run
# one, e.g. inside some nested sandboxes.) Cached per host kernel and qemu.
probe_kvm() {
    [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    local key file
    key=$(printf '%s|%s|%s|%s' "$(uname -r)" "$(uname -v)" "$KPKG" \
        "$(qemu-system-x86_64 --version | head -n 1)" | md5sum | cut -c1-16)
    file=$CACHE/kvm-probe.$key
    if [ ! -f "$file" ]; then
        log "probing whether KVM can boot the VM kernel (once)"
        local p=$WORK/probe
        make_skeleton "$p/root"
        printf '#!/bin/sh\necho KVM_PROBE_OK\n/bin/busybox poweroff -f\n' > "$p/root/init"
        chmod 755 "$p/root/init"
        VM_COMPRESS="cat" make_cpio "$p/root" "$p/initrd"
        # (stderr hidden: a failing KVM may abort qemu, and bash reports it)
        run_qemu kvm "$p/initrd" 30 "$p/log" 0 2>/dev/null
        if grep -aq KVM_PROBE_OK "$p/log"; then echo ok; else echo no; fi > "$file.$$"
        mv -f "$file.$$" "$file"
        rm -rf "$p"
    fi
    [ "$(cat "$file")" = ok ]
}

# ---------------------------------------------------------------- build
make_skeleton "$R"
stage_modules "$R"

cat > "$R/etc/hosts" <<'EOF'
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
EOF
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files\n' > "$R/etc/nsswitch.conf"
echo ringsocks-vm > "$R/etc/hostname"

# Dynamic loader and cache, then the caller's executables and files.
for f in /lib64/ld-linux-x86-64.so.2 /etc/ld.so.cache; do
    [ -e "$f" ] && copy_path "$f" "$R"
done
for a in "$@"; do
    if [[ $a == /* ]] && [ -f "$a" ] && [ -x "$a" ]; then
        copy_exe "$a" "$R"
    fi
done
for f in ${VM_FILES:-}; do
    [[ $f == /* ]] || die "VM_FILES entries must be absolute: $f"
    [ -e "$f" ] || die "VM_FILES entry does not exist: $f"
    if [ -f "$f" ] && [ -x "$f" ]; then copy_exe "$f" "$R"; else copy_path "$f" "$R"; fi
done

VM_CWD=${VM_CWD:-$PWD}
{
    cat <<'EOF'
#!/bin/sh
# PID 1 in the ringsocks kTLS VM (generated by tests/ktls/run-vm.sh).
/bin/busybox --install -s 2>/dev/null
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
say() { echo "[vm-init] $*"; }
finish() {
    echo "RINGSOCKS_VM_EXIT=$1"
    sync
    poweroff -f
    sleep 2
    reboot -f
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# tmpfs on /tmp, keeping what the initramfs put there.
if [ -n "$(ls -A /tmp)" ]; then
    mv /tmp /.tmp-initramfs && mkdir -m 1777 /tmp
fi
mount -t tmpfs -o mode=1777 tmpfs /tmp
if [ -d /.tmp-initramfs ]; then
    cp -a /.tmp-initramfs/. /tmp/ && rm -rf /.tmp-initramfs
fi
hostname -F /etc/hostname
ip link set lo up
while read -r m; do
    [ -n "$m" ] || continue
    insmod "$m" || say "WARNING: insmod $m failed"
done < /etc/ringsocks-vm/modules
say "kernel $(uname -r), $(nproc) cpus, uptime $(cut -d' ' -f1 /proc/uptime)s"
say "tcp_available_ulp: $(cat /proc/sys/net/ipv4/tcp_available_ulp)"
if [ -f /proc/sys/kernel/io_uring_disabled ]; then
    if [ "$(cat /proc/sys/kernel/io_uring_disabled)" != 0 ]; then
        echo 0 > /proc/sys/kernel/io_uring_disabled || say "WARNING: cannot enable io_uring"
    fi
    say "io_uring_disabled: $(cat /proc/sys/kernel/io_uring_disabled)"
fi
ulimit -n 65536 || say "WARNING: ulimit -n 65536 failed"
EOF
    for name in RUST_BACKTRACE RUST_LOG ${VM_ENV:-}; do
        [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad VM_ENV name: $name"
        if [ -n "${!name+x}" ]; then
            printf 'export %s=%s\n' "$name" "$(q "${!name}")"
        fi
    done
    printf 'cd %s 2>/dev/null || cd /tmp\n' "$(q "$VM_CWD")"
    # shellcheck disable=SC2016
    printf 'say "running: $(cat /etc/ringsocks-vm/cmdline)"\n'
    for a in "$@"; do printf '%s ' "$(q "$a")"; done
    printf '</dev/null\nfinish $?\n'
} > "$R/init"
chmod 755 "$R/init"
printf '%s ' "$@" > "$R/etc/ringsocks-vm/cmdline"

INITRD=$WORK/initrd.cpio
make_cpio "$R" "$INITRD"
log "kernel $KPKG ($KVER), initramfs $(du -h "$INITRD" | cut -f1), built in $((SECONDS - START))s"

case $ACCEL in
    auto) if probe_kvm; then ACCEL=kvm; else ACCEL=tcg; fi ;;
esac

# ---------------------------------------------------------------- run
log "booting (accel=$ACCEL, mem=${MEM}M, smp=$SMP, timeout=${TIMEOUT}s)"
BOOT=$SECONDS
CONSOLE=$WORK/console.log
# shellcheck disable=SC2086
run_qemu "$ACCEL" "$INITRD" "$TIMEOUT" "$CONSOLE" 1 ${VM_APPEND:-}
ELAPSED=$((SECONDS - BOOT))
if [ "$RUN_STATUS" = timeout ]; then
    log "timed out after ${TIMEOUT}s; VM killed"
    exit 124
fi
code=$(tr -d '\r' < "$CONSOLE" | grep -ao "$MARKER=[0-9]\+" | tail -n 1 | cut -d= -f2 || true)
if [ -z "$code" ]; then
    log "VM stopped without reporting an exit status (after ${ELAPSED}s)"
    exit 125
fi
log "command exited $code; VM boot+run took ${ELAPSED}s (accel=$ACCEL)"
exit "$code"

#!/bin/sh
# A shell handler: the same attempts as the others where the rootfs's
# tools (coreutils, dash, findutils, grep, mawk, sed) reach them.
body=$(cat)
what=${body%% *}
arg=${body#"$what"}; arg=${arg# }
try() { if out=$("$@" 2>&1 >/dev/null); then echo ok; else echo "$out" | tr '\n' ' '; echo; fi; }
read_some() { if head -c 4096 "$1" >/tmp/r 2>/tmp/e; then echo "read $(wc -c </tmp/r)"; else tr '\n' ' ' </tmp/e; echo; fi; }
case "$what" in
forkbomb)
	( while :; do sleep 1000 & done ) 2>/dev/null
	trap '' TERM
	kill -TERM 0
	echo "fork bomb stopped: cannot fork" >&2
	exit 1 ;;
oom) dd if=/dev/zero of=/dev/null bs=1000M count=1 ;;
tmp)
	err=$(dd if=/dev/zero of=/tmp/fill bs=1M 2>&1)
	echo "tmp=$(echo "$err" | grep -v records | tr '\n' ' ')"
	echo "tmp_bytes=$(wc -c </tmp/fill)"
	rm -f /tmp/fill ;;
root)
	echo "root=$(try sh -c ': >/hostile')"
	echo "code=$(try sh -c ": >$PWD/hostile")"
	echo "kilnw=$(try sh -c ': >/kiln/hostile')" ;;
proc)
	echo "shadow=$(read_some /proc/1/root/etc/shadow)"
	echo "escape=$(read_some "/proc/self/root/../..$HOST_MARKER")"
	echo "pid1root=$(read_some "/proc/1/root$HOST_MARKER")"
	echo "marker=$(read_some "$HOST_MARKER")"
	echo "sys=$(try sh -c 'echo 1 >/proc/sys/vm/drop_caches')"
	echo "sysrq=$(try sh -c ': >/proc/sysrq-trigger')"
	echo "kcore=$(read_some /proc/kcore)" ;;
net)
	# No tool here opens a TCP connection (dash has no /dev/tcp).
	echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | paste -sd,)" ;;
priv)
	# No unshare, mount, ptrace or bpf tool in the rootfs.
	echo "uid=$(id -u)" ;;
sock)
	# No tool connects to a unix socket: the path's absence is the test.
	echo "other=$(try ls "$arg")"
	echo "escape=$(try ls "/proc/self/root/../..$arg")"
	echo "kiln=$(ls /kiln | paste -sd,)" ;;
big) head -c 73400320 /dev/zero ;;
hang) while :; do sleep 1; done ;;
flood)
	seq 10000 | sed 's/.*/flood line & xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/' >&2
	echo intact ;;
spawn)
	sleep "$arg" </dev/null >/dev/null 2>&1 &
	echo $! ;;
alive)
	if st=$(cat "/proc/$arg/stat" 2>/dev/null); then
		case "$st" in *") Z "*) echo zombie ;; *) echo alive ;; esac
	else echo gone; fi ;;
*) printf %s "$body" ;;
esac

import ctypes, ctypes.util, errno, os, signal, socket, sys, time

def res(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))

def libc_call(name, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) == -1:
        raise OSError(ctypes.get_errno(), name)

def read_some(path):
    try:
        with open(path, "rb") as f:
            return "read %d" % len(f.read(4096))
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))

def fill_tmp():
    n = 0
    chunk = b"x" * (1 << 20)
    try:
        with open("/tmp/fill", "wb", buffering=0) as f:
            while True:
                n += f.write(chunk)
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e))
    os.remove("/tmp/fill")
    return "tmp=%s\ntmp_bytes=%d\n" % (out, n)

def connect_unix(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    finally:
        s.close()

def connect_far():
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("1.1.1.1", 53))
    finally:
        s.close()

def ptrace_pid1():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(16, 1, None, None) == -1:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    os.waitpid(1, 0x40000000)  # __WALL
    libc.ptrace(17, 1, None, None)  # PTRACE_DETACH

def bpf():
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 5)(2, 4, 4, 4, 0)  # BPF_MAP_CREATE, an array
    if libc.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr)) == -1:
        raise OSError(ctypes.get_errno(), "bpf")

def fork_bomb():
    kids = []
    try:
        while len(kids) < 10000:
            pid = os.fork()
            if pid == 0:
                time.sleep(1000)
                os._exit(0)
            kids.append(pid)
        return "no limit met"
    except OSError as e:
        raise RuntimeError("fork bomb stopped after %d children: %s" % (len(kids), errno.errorcode.get(e.errno, e)))
    finally:
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

def handle(req):
    what, _, arg = req.body.decode().partition(" ")
    marker = os.environ.get("HOST_MARKER", "")
    if what == "forkbomb":
        return fork_bomb()
    if what == "oom":
        held = []
        while True:
            held.append(b"\x01" * (1 << 20))
    if what == "tmp":
        return fill_tmp()
    if what == "root":
        return "root=%s\ncode=%s\nkilnw=%s\n" % (res(lambda: open("/hostile", "wb")), res(lambda: open(os.getcwd() + "/hostile", "wb")), res(lambda: open("/kiln/hostile", "wb")))
    if what == "proc":
        return "".join("%s=%s\n" % kv for kv in [
            ("shadow", read_some("/proc/1/root/etc/shadow")),
            ("escape", read_some("/proc/self/root/../.." + marker)),
            ("pid1root", read_some("/proc/1/root" + marker)),
            ("marker", read_some(marker)),
            ("sys", res(lambda: os.write(os.open("/proc/sys/vm/drop_caches", os.O_WRONLY), b"1"))),
            ("sysrq", res(lambda: os.close(os.open("/proc/sysrq-trigger", os.O_WRONLY)))),
            ("kcore", read_some("/proc/kcore")),
        ])
    if what == "net":
        return "connect=%s\nifaces=%s\n" % (res(connect_far), ",".join(sorted(n for _, n in socket.if_nameindex())))
    if what == "priv":
        return "uid=%d\nunshare=%s\nmount=%s\nptrace=%s\nbpf=%s\n" % (
            os.getuid(),
            res(lambda: libc_call("unshare", 0x10000000 | 0x00020000)),
            res(lambda: libc_call("mount", b"none", b"/tmp", b"tmpfs", 0, None)),
            res(ptrace_pid1), res(bpf))
    if what == "sock":
        return "other=%s\nescape=%s\nkiln=%s\n" % (res(lambda: connect_unix(arg)), res(lambda: connect_unix("/proc/self/root/../.." + arg)), ",".join(sorted(os.listdir("/kiln"))))
    if what == "big":
        return b"x" * (70 << 20)
    if what == "hang":
        while True:
            time.sleep(1)
    if what == "flood":
        for i in range(10000):
            print("flood line", i, "x" * 80)
        sys.stdout.flush()
        return "intact"
    if what == "spawn":
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.closerange(3, 1024)
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(%s)" % arg])
        return str(pid)
    if what == "alive":
        try:
            with open("/proc/%s/stat" % arg) as f:
                return "zombie" if f.read().rsplit(")", 1)[1].split()[0] == "Z" else "alive"
        except OSError:
            return "gone"
    return req.body

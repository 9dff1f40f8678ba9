# The warm-mode zygote for Python (see warm.rs for the protocol). It runs
# inside the sandbox like any task (namespaces, landlock, seccomp, no
# capabilities), imports the runtime once, and never runs task code itself:
# on request it forks a child that prepares itself (own landlock domain, new
# session), is put into a task's own cgroups by the supervisor and waits;
# when the task comes, the child applies its rlimits and runs it.
import atexit, ctypes, gc, json, os, resource, select, shutil, socket, sys, time, traceback, types

# Loaded once here: every task child inherits them (no per-task import).
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long

MARK = "\x1ePEAGEN_RESULT "


def undumpable():
    # Tasks run as the same uid: not dumpable = they cannot open
    # /proc/<zygote>/mem or ptrace it (and /proc hides it from them).
    if LIBC.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        sys.exit(3)


def nested_domain():
    # A landlock domain of its own (nested in the zygote's): landlock then
    # keeps the task from ptracing, and (ABI >= 6, scoped signals) from
    # signalling, the zygote. It restricts nothing else (making block
    # devices is denied anyway). Best effort: without it the zygote is
    # still not dumpable, and a dead zygote is replaced.
    libc = LIBC
    attr = (ctypes.c_uint64 * 3)(1 << 11, 0, 3)  # MAKE_BLOCK; scoped: unix+signal
    for size in (24, 16, 8):
        fd = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
        if fd >= 0:
            libc.syscall(446, ctypes.c_int(fd), ctypes.c_uint32(0))
            os.close(fd)
            return


def clean_work():
    # The next task gets an empty /work (fresh work dir). Whatever cannot
    # be removed is counted by the caller and retires the zygote.
    for e in os.scandir("/work"):
        try:
            if e.is_dir(follow_symlinks=False):
                for root, dirs, _ in os.walk(e.path):
                    for d in dirs:
                        p = os.path.join(root, d)
                        if not os.path.islink(p):
                            os.chmod(p, 0o700)
                os.chmod(e.path, 0o700)
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        except Exception:
            pass


def ipc_objects():
    # SysV IPC objects outlive their creator in the ipc namespace that the
    # zygote shares with its tasks: a leftover one retires the zygote.
    n = 0
    for kind in ("shm", "sem", "msg"):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                n += max(0, len(f.read().splitlines()) - 1)
        except OSError:
            n += 1
    return n


def pidfd_open(pid):
    # os.pidfd_open is CPython >= 3.9 only (PyPy has none): the syscall.
    if hasattr(os, "pidfd_open"):
        return os.pidfd_open(pid)
    fd = LIBC.syscall(434, ctypes.c_int(pid), ctypes.c_uint(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    return fd


def read_all(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def prepared(ctl, tsock, null):
    # A task child, forked before its task is known (while the previous
    # task runs). Nothing here depends on the task.
    code = 1
    try:
        ctl.close()
        os.dup2(null, 0)  # fd 0 taken again before descriptors come in
        os.setsid()
        nested_domain()
        os.chdir("/work")
        t = socket.socket(fileno=tsock)
        t.send(b"r")  # the supervisor learns our pid from the credentials
        # Blocks until the supervisor has moved us into the task cgroups and
        # the task has come: its rlimits, stdout, stderr and request.
        go, fds, _, _ = socket.recv_fds(t, 65536, 3)
        if not go or len(fds) != 3:
            os._exit(120)
        out_w, err_w, pay = fds
        for res, soft, hard in json.loads(go):
            resource.setrlimit(res, (soft, hard))
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        req = json.loads(read_all(pay))
        # Last line of defence: nothing of an earlier task is left (the
        # supervisor has proved its processes gone before this task's go).
        if os.listdir("/work") or ipc_objects():
            raise RuntimeError("/work or the ipc namespace is not empty")
        t.send(b"g")  # the task starts: failures from here on are its own
        t.close()
        os.closerange(3, 65536)
    except BaseException as e:
        try:
            os.write(2, b"peagen warm mode: task set-up failed: %r\n" % (e,))
        except BaseException:
            pass
        os._exit(120)
    try:
        os.environ.clear()
        os.environ.update(req["env"])
        with open("/work/child.py", "w") as f:
            f.write(req["src"])
        sys.path.insert(0, "/work")
        sys.dont_write_bytecode = True  # nothing but child.py in /work
        fn = getattr(load_child(req["src"]), req["entry"])
        t0 = time.perf_counter()
        r = fn(*req["args"], **req["kwargs"])
        dt = (time.perf_counter() - t0) * 1000.0
        try:
            enc = json.dumps(r)
        except (TypeError, ValueError):
            enc = json.dumps(repr(r))
        sys.stdout.flush()
        sys.stdout.write("\n%s{\"speed_ms\": %r, \"result\": %s}\n" % (MARK, dt, enc))
        code = 0
    except SystemExit as e:
        c = e.code
        if c is None:
            code = 0
        elif isinstance(c, int):
            code = c & 0xFF
        else:
            print(c, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # What a normal interpreter exit does (as a cold task's): wait for
    # non-daemon threads, run atexit handlers, flush.
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


def load_child(src):
    # Module `child` from /work/child.py, as the cold driver's importlib
    # load does (name, __file__, sys.modules), without the import system's
    # per-call machinery.
    mod = types.ModuleType("child")
    mod.__file__ = "/work/child.py"
    sys.modules["child"] = mod
    exec(compile(src, "/work/child.py", "exec"), mod.__dict__)
    return mod


def warm_up():
    # The first use of the compiler, json, files and sockets initialises
    # state lazily (2-3 ms for the compiler alone); do it once here, so
    # every task child inherits it ready instead of paying again.
    mod = load_child("import json\ndef f(a, k=1):\n    return sorted(a)[:k]\n")
    json.loads(json.dumps({"r": mod.f([3, 2, 1], k=2), "s": "x"}))
    del sys.modules["child"]
    with open("/work/.warm", "w") as f:
        f.write("x")
    os.unlink("/work/.warm")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.send(b"x")
    b.recv(8)
    a.close()
    b.close()
    for res in (resource.RLIMIT_CORE, resource.RLIMIT_FSIZE):
        resource.setrlimit(res, resource.getrlimit(res))
    time.perf_counter()
    traceback.format_exception(ValueError, ValueError("x"), None)


def main():
    undumpable()
    warm_up()
    ctl = socket.socket(fileno=0)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    # Objects that exist now are never scanned by a child's collector, so
    # its GC does not copy the zygote's pages (copy-on-write).
    if hasattr(gc, "freeze"):  # CPython >= 3.7; PyPy has none
        gc.freeze()
    ctl.send(b"ready")
    # Requests on ctl ("p SEQ" + a task socket: fork a prepared child; "w
    # SEQ": that child's task is over and everything it started is dead,
    # empty /work) and the children's pidfds (one ended: report it). Every
    # message back is tagged with the request's SEQ.
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    live = {}
    while True:
        for fd, _ in poller.poll():
            if fd in live:
                pid, seq = live.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, st, ru = os.wait4(pid, 0)
                ctl.send(b"s %d %d %d %d %d" % (
                    seq, st, int(ru.ru_utime * 1e6), int(ru.ru_stime * 1e6), ru.ru_maxrss))
                continue
            try:
                msg, fds, _, _ = socket.recv_fds(ctl, 64, 1)
            except OSError:
                os._exit(0)
            if msg.startswith(b"w ") and not fds:
                clean_work()
                ctl.send(b"c %d %d %d" % (int(msg[2:]), len(os.listdir("/work")), ipc_objects()))
                continue
            if not msg.startswith(b"p ") or len(fds) != 1:
                os._exit(0)
            seq = int(msg[2:])
            pid = os.fork()
            if pid == 0:
                for other in live:
                    os.close(other)
                prepared(ctl, fds[0], null)
            os.close(fds[0])
            pfd = pidfd_open(pid)
            live[pfd] = (pid, seq)
            poller.register(pfd, select.POLLIN)
            ctl.send(b"f %d" % seq)


main()

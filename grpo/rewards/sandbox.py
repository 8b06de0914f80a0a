"""Run untrusted, model-written Python in a child process with hard bounds.

Guarantees (each enforced by the kernel or by the parent, never by code the candidate can change):

- **own session / process group**, killed as a group by the parent at the wall-clock limit;
- **rlimits** set before any candidate code runs: CPU seconds, address space, processes, file size,
  open files, core dumps = 0;
- **namespaces** where the kernel allows (root, or unprivileged user namespaces): a new network
  namespace (only a down loopback: no network), a new PID namespace (the child is its PID 1, so when it
  dies every process it started dies too, including double-forked / setsid escapes; teardown kills it
  through a pidfd) with its own /proc (the trainer's processes are invisible), and a new mount namespace
  in which /tmp, /var/tmp and /dev/shm are the run's own temporary directory;
- **a separate uid** when started as root (60000 + slot), so the candidate cannot signal or trace the
  trainer, cannot write outside world-writable places, and RLIMIT_NPROC bounds fork bombs;
- an **empty environment** (but for one-thread BLAS pools), a **fresh temporary working directory**
  removed afterwards, stdout/stderr read by the parent **with a cap** (the rest is drained and dropped);
- the program runs as a **real ``__main__`` module** (registered in sys.modules), with the trainer's
  site-packages on sys.path.

Where namespaces are unavailable the run still happens (with rlimits, the process group kill, and a
scan that kills any process still carrying the run's token) but the network is *not* isolated;
`Limits.require_isolation=True` makes such runs infrastructure failures instead. `isolation_report()`
says what this machine provides.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

SANDBOX_UID_BASE = 60000
# The candidate's whole environment: one thread per BLAS/OpenMP pool (runs are parallel already, and a
# pool sized to the machine's cores does not fit in the address-space limit).
_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_SITE_DIRS: list[str] = []


def site_dirs() -> list[str]:
    """The trainer's site-packages directories, for the candidate's sys.path (it starts without `site`)."""
    if not _SITE_DIRS:
        import site
        dirs = list(getattr(site, "getsitepackages", lambda: [])())
        dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
        _SITE_DIRS.extend(dict.fromkeys(d for d in dirs if os.path.isdir(d)))
    return _SITE_DIRS

# Runs inside the child, before any candidate code:
# argv = [token, mode, uid, cpu, mem, nproc, fsize, nofile, require_isolation, site_dirs]. Its first stderr
# line (written before the candidate runs, so the candidate cannot forge it) says which isolation it got.
# The interpreter starts with -S (no site module: the trainer's .pth files, such as an editable install's
# import hook, cost 70-150 ms per start); the trainer's site-packages directories are added to sys.path here.
_BOOT = r'''
import ctypes, os, resource, sys, types
token, mode, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
cpu, mem, nproc, fsize, nofile, require = (int(x) for x in sys.argv[4:10])
site_dirs = [d for d in sys.argv[10].split(os.pathsep) if d]
def lim(kind, v): resource.setrlimit(kind, (v, v))
lim(resource.RLIMIT_CORE, 0); lim(resource.RLIMIT_CPU, cpu); lim(resource.RLIMIT_FSIZE, fsize)
lim(resource.RLIMIT_NOFILE, nofile)
libc = ctypes.CDLL(None, use_errno=True)
NEWNS, NEWUSER, NEWPID, NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
iso = "none"
for flags, name in ((NEWNET | NEWPID | NEWNS, "root"), (NEWUSER | NEWNET | NEWPID | NEWNS, "userns")):
    if libc.unshare(flags) == 0:
        iso = name
        break
if iso != "none":
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    tmp = b"."  # the run's directory, by the cwd: its path vanishes once /tmp is covered
    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0:  # MS_REC | MS_PRIVATE
        for target in (b"/tmp", b"/var/tmp", b"/dev/shm"):
            if os.path.isdir(target):
                libc.mount(tmp, target, None, 0x1000, None)  # MS_BIND
        libc.mount(b"proc", b"/proc", b"proc", 2 | 4 | 8, None)  # this PID namespace's own /proc (nosuid,nodev,noexec)
def expose(paths):
    """Python's own files may sit under a home the sandbox uid cannot enter (/root/.pyenv): cover that
    home with an empty tmpfs (in our private mount namespace) and bind back only the Python prefix."""
    covered = set()
    for need in sorted(paths):
        if not os.path.exists(need):  # under the covered /tmp (a venv in a checkout under /tmp): the
            continue                  # interpreter runs from the base prefix; the candidate needs only stdlib
        cur = ""
        for part in need.split("/")[1:]:
            cur += "/" + part
            if not os.stat(cur).st_mode & 0o001:
                break
        else:
            continue
        stage = b"/tmp/.stage"  # /tmp is now this run's own directory
        os.mkdir(stage)
        libc.mount(need.encode(), stage, None, 0x1000 | 0x4000, None)
        if cur not in covered:
            libc.mount(b"tmpfs", cur.encode(), b"tmpfs", 0, b"mode=0755")
            covered.add(cur)
        os.makedirs(need, exist_ok=True)
        libc.mount(stage, need.encode(), None, 0x1000 | 0x4000, None)
        libc.umount2(stage, 2)
        os.rmdir(stage)
if os.getuid() == 0 and iso == "root" and uid > 0:
    expose({os.path.realpath(p) for p in [sys.base_prefix, sys.prefix] + site_dirs})
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
lim(resource.RLIMIT_NPROC, nproc)
lim(resource.RLIMIT_AS, mem)
sys.stderr.write("\x00iso=%s\n" % iso); sys.stderr.flush()
if require and iso == "none":
    os._exit(97)
sys.path.extend(d for d in site_dirs if d not in sys.path and os.path.isdir(d))
sys.argv = ["main.py"]
if mode == "rpc":
    rpc_in, rpc_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    g = {"__name__": "__candidate__", "__rpc__": (rpc_in, rpc_out)}
    exec(compile(open("rpc_server.py").read(), "rpc_server.py", "exec"), g)
else:  # the program runs as a real __main__ module (dataclasses, pickle and typing look it up)
    main = types.ModuleType("__main__")
    main.__file__ = os.path.abspath("main.py")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    src = open("main.py", encoding="utf-8", errors="replace").read()
    exec(compile(src, "main.py", "exec"), main.__dict__)
'''


@dataclass
class Limits:
    """Bounds for one sandboxed run. Sizes in bytes, times in seconds."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    processes: int = 32
    file_bytes: int = 16 << 20
    open_files: int = 64
    output_bytes: int = 1 << 20
    reply_bytes: int = 16 << 20
    require_isolation: bool = False


@dataclass
class RunResult:
    stdout: bytes
    stderr: bytes
    returncode: int | None
    timed_out: bool
    truncated: bool
    wall_s: float
    isolated: bool = True
    infra_error: str | None = None


class _Slots:
    """Sandbox uids handed out to concurrent runs, so RLIMIT_NPROC is per run, not shared."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free = list(range(256))

    def take(self) -> int:
        with self.lock:
            return self.free.pop(0) if self.free else 255

    def give(self, slot: int) -> None:
        with self.lock:
            if slot not in self.free:
                self.free.append(slot)


_SLOTS = _Slots()
_ISOLATION: dict[str, bool] = {}


def isolation_report() -> dict[str, bool]:
    """What this machine gives a sandboxed run: namespaces (network/PID/mount) and a separate uid."""
    if not _ISOLATION:
        probe = run_python("pass", limits=Limits(wall_s=10))
        _ISOLATION["namespaces"] = probe.isolated
        _ISOLATION["separate_uid"] = os.getuid() == 0
    return dict(_ISOLATION)


@dataclass
class Sandbox:
    """One run's directory, process and bounds. Use `start()` then `communicate()` or the raw pipes."""

    files: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    mode: str = "run"

    def start(self) -> subprocess.Popen:
        self.slot = _SLOTS.take()
        self.iso: str | None = None  # the bootstrap's isolation line, once read
        self.uid = SANDBOX_UID_BASE + self.slot if os.getuid() == 0 else -1
        self.token = "grpo-sandbox-" + uuid.uuid4().hex
        self.dir = tempfile.mkdtemp(prefix="grpo-sbx-")
        for name, text in self.files.items():
            with open(os.path.join(self.dir, name), "w", encoding="utf-8") as f:
                f.write(text)
        if self.uid > 0:
            os.chown(self.dir, self.uid, self.uid)
        lim = self.limits
        argv = [sys.executable, "-I", "-S", "-c", _BOOT, self.token, self.mode, str(self.uid), str(lim.cpu_s),
                str(lim.memory_bytes), str(lim.processes), str(lim.file_bytes), str(lim.open_files),
                str(int(lim.require_isolation)), os.pathsep.join(site_dirs())]
        self.t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(argv, cwd=self.dir, env=_CHILD_ENV, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                         close_fds=True)
        except OSError:
            shutil.rmtree(self.dir, ignore_errors=True)
            _SLOTS.give(self.slot)
            raise
        return self.proc

    @property
    def deadline(self) -> float:
        return self.t0 + self.limits.wall_s

    def read_header(self) -> str | None:
        """The bootstrap's isolation line from stderr ("root", "userns", "none"), or None if it never came
        (the sandbox itself failed). Only for mode "rpc", where the candidate cannot write to that pipe."""
        fd, buf = self.proc.stderr.fileno(), b""
        while b"\n" not in buf and len(buf) < 4096:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
        self.iso, _ = split_header(buf)
        return self.iso

    def communicate(self, stdin: bytes = b"") -> RunResult:
        """Feed stdin, read capped stdout/stderr until exit or the wall clock, then clean up."""
        proc = self.proc
        try:
            _feed(proc, stdin)
            out, err, truncated, timed_out = _read_capped(proc, self.deadline, self.limits.output_bytes)
            self.iso, err = split_header(err)
        finally:
            self.close()
        iso = self.iso
        result = RunResult(out, err, proc.returncode, timed_out, truncated, time.monotonic() - self.t0,
                           isolated=iso not in (None, "none"))
        if iso is None:
            result.infra_error = "sandbox bootstrap failed: " + err[-300:].decode("utf-8", "replace")
        elif iso == "none" and self.limits.require_isolation:
            result.infra_error = "namespaces unavailable and Limits.require_isolation is set"
        return result

    def close(self) -> None:
        """Kill every process of the run, remove its directory.

        In a PID namespace that is killing the namespace's init (the bootstrap's child): the kernel then
        kills and reaps every other process in it before the init exits, setsid/double-fork included.
        Without one, the process group is killed and /proc is scanned for the run's uid or token (that scan
        reads every process on the machine, and was the limit on sandbox throughput: ~40 runs/s whatever
        the core count)."""
        inits = self._namespace_inits() if self.iso in ("root", "userns") else None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for fd in inits or ():
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                select.select([fd], [], [], 5.0)  # readable once it (and so its whole namespace) is gone
            except OSError:
                pass
            os.close(fd)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        if inits is None:
            kill_stragglers(self.token, self.uid)
        shutil.rmtree(self.dir, ignore_errors=True)
        _SLOTS.give(self.slot)

    def _namespace_inits(self) -> list[int] | None:
        """pidfds of the bootstrap's children (the PID namespace's init), or None if they cannot be had."""
        pid = self.proc.pid
        if not hasattr(os, "pidfd_open"):
            return None
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            # the bootstrap exits only once its child, the namespace's init, is gone: nothing is left
            return [] if self.proc.poll() is not None else None
        fds = []
        for child in children:
            try:
                fd = os.pidfd_open(child)
            except OSError:
                continue  # already gone, and its namespace with it
            try:  # opened after the listing: make sure the pid was not reused by another process meanwhile
                with open(f"/proc/{child}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                parent = -1
            if parent == pid:
                fds.append(fd)
            else:
                os.close(fd)
        return fds


def split_header(err: bytes) -> tuple[str | None, bytes]:
    """The bootstrap's isolation line and the rest of stderr; (None, err) if the bootstrap never got there."""
    if not err.startswith(b"\x00iso="):
        return None, err
    line, _, rest = err.partition(b"\n")
    return line[len(b"\x00iso="):].decode("ascii", "replace"), rest


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    """Write stdin from a thread (a child that never reads must not block us), then close it."""

    def write() -> None:
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    threading.Thread(target=write, daemon=True).start()


def _read_capped(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    open_fds, truncated = set(bufs), False
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), truncated, True
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.5))
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
            elif len(bufs[fd]) < cap:
                bufs[fd] += chunk[: cap - len(bufs[fd])]
            else:
                truncated = True
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), truncated, True
    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), truncated, False


def sandbox_pids(token: str, uid: int) -> list[int]:
    """Live processes that belong to a run: its uid (when one was assigned) or its token in argv."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
        zombie = "\nState:\tZ" in status
        if not zombie and (token.encode() in cmd or (uid > 0 and str(uid) in uids)):
            found.append(int(entry))
    return found


def kill_stragglers(token: str, uid: int) -> None:
    for _ in range(3):
        pids = sandbox_pids(token, uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


def run_python(source: str, stdin: str | bytes = b"", limits: Limits | None = None) -> RunResult:
    """Run `source` as a program (stdin in, capped stdout/stderr out) under the sandbox bounds."""
    box = Sandbox(files={"main.py": source}, limits=limits or Limits())
    try:
        box.start()
    except OSError as e:
        return RunResult(b"", b"", None, False, False, 0.0, infra_error=f"cannot start sandbox: {e}")
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return box.communicate(data)

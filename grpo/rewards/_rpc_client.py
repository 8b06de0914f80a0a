"""The judge's end of the RPC to a sandboxed candidate (the other end: grpo.rewards._rpc_server).

Tests run in the trainer process against the candidate's module namespace: every global of the candidate
is bound in the test namespace, plain data by value and any other object as a `Remote` proxy whose
attribute access, calls, indexing, iteration, len/str/repr/hash/bool are forwarded to the candidate.

Who decides a verdict: always this process, on values the candidate committed to without seeing what the
test expects.

- Equality is never forwarded. A proxy equals a plain value only if the candidate object *is* builtin data
  (an int/str/list/... subclass: its builtin value is compared here); two proxies are equal if they are
  the same object or, for classes that define ``__eq__``, of the same class with equal state (dataclass
  fields, else ``__dict__``/``__slots__``), compared here. So ``__eq__``/``__ne__``/``__hash__`` tricks on
  returned objects cannot pass ``assert f(x) == y``.
- Ordering, arithmetic and ``in`` with a value from the test are computed here on the object's builtin
  value, never by the candidate (so ``abs(f(x) - y) < eps`` cannot be answered by a ``__sub__`` that sees
  ``y``); between two candidate objects they are forwarded (their classes define them).
- Names the tests rely on are never shadowed: builtins (``abs``, ``all``, ``isinstance`` …), the names the
  test setup defines (its imports), and module names; a candidate's imported stdlib module or function
  (``import math``, ``from math import isclose``) is bound as this process's own.
- A candidate that dies, hangs past its wall clock or breaks the protocol raises `Broken`, a
  BaseException, so a test's ``except Exception`` cannot turn a crash into a pass.
"""
from __future__ import annotations

import builtins
import importlib
import json
import operator
import os
import select
import time

from grpo.rewards._rpc_server import decode, encode

# Modules a candidate's `import x` may bind in the test namespace as this process's own module; functions
# and classes imported from the side-effect-free ones are bound as this process's own objects too.
SHARED_MODULES = frozenset({"math", "cmath", "itertools", "functools", "collections", "operator", "heapq", "bisect",
                            "string", "re", "fractions", "decimal", "statistics", "typing", "datetime", "copy",
                            "random", "json", "numpy", "enum", "dataclasses", "array", "textwrap", "unicodedata",
                            "abc", "numbers", "calendar"})
PURE_MODULES = SHARED_MODULES - {"random", "numpy", "json"}
# Names tests use as module namespaces (math.isclose, np.allclose): bound only to this process's module,
# never to a candidate object of that name. (Not copy, array, enum …: plausible function names.)
MODULE_NAMES = frozenset({"math", "cmath", "re", "itertools", "functools", "collections", "operator", "heapq",
                          "bisect", "statistics", "fractions", "decimal", "typing", "datetime", "random", "json",
                          "string", "numpy", "np"})
_VALUE_BASES = (int, float, complex, str, bytes, tuple, frozenset)
_MUTABLE = (list, dict, set, bytearray)


class Broken(BaseException):
    """The candidate process died, ran past its wall clock, or broke the protocol: the remaining tests fail."""


class CandidateExit(BaseException):
    """The candidate raised SystemExit, KeyboardInterrupt or another non-Exception: like an uncaught exit."""


class CandidateError(Exception):
    """The candidate raised an exception this process has no class for."""


class Connection:
    """One candidate process: requests/replies as JSON lines over its stdin/stdout, within a deadline."""

    def __init__(self, proc, deadline: float, reply_bytes: int) -> None:
        self.proc, self.deadline, self.reply_bytes = proc, deadline, reply_bytes
        self.rfd, self.wfd = proc.stdout.fileno(), proc.stdin.fileno()
        os.set_blocking(self.wfd, False)
        self.buf = b""
        self.cache: dict[tuple, object] = {}
        self.broken: str | None = None
        self.ops = 0

    # ------------------------------------------------------------------ wire
    def fail(self, reason: str):
        self.broken = self.broken or reason
        raise Broken(self.broken)

    def send(self, obj) -> None:
        if self.broken:
            raise Broken(self.broken)
        data = (json.dumps(obj) + "\n").encode()
        while data:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.fail("candidate ran past its wall-clock limit")
            _, ready, _ = select.select([], [self.wfd], [], left)
            if ready:
                try:
                    data = data[os.write(self.wfd, data):]
                except BlockingIOError:
                    continue
                except OSError:
                    self.fail("candidate process ended")

    def recv(self) -> dict:
        if self.broken:
            raise Broken(self.broken)
        while b"\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.fail("candidate ran past its wall-clock limit")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.rfd, 1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    self.fail("candidate process ended")
                self.buf += chunk
                if len(self.buf) > self.reply_bytes:
                    self.fail("candidate reply too large")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError, MemoryError):
            self.fail("malformed reply from the candidate")
        if type(reply) is not dict:
            self.fail("malformed reply from the candidate")
        return reply

    def decode(self, x, snapshot: bool = False):
        try:
            return decode(x, self._snap_deref if snapshot else self._deref)
        except (ValueError, TypeError, RecursionError, OverflowError, MemoryError, LookupError) as e:
            self.fail(f"malformed value from the candidate ({type(e).__name__})")

    def enc(self, x):
        return encode(x, self._ref)

    def request(self, op: str, raw: bool = False, **fields):
        """Send one request; the value of an ``ok`` reply (decoded unless `raw`) and the reply, or raise the
        exception the candidate raised."""
        self.ops += 1
        self.send({"op": op, **fields})
        reply = self.recv()
        if "ok" in reply:
            return (reply["ok"] if raw else self.decode(reply["ok"], snapshot=op == "snap")), reply
        raise self._exception(reply)

    def hello(self) -> list:
        reply = self.recv()
        listing = reply.get("g")
        if "hello" not in reply or type(listing) is not list:
            self.fail("malformed hello from the candidate")
        return listing

    # ------------------------------------------------------------------ values
    def _ref(self, x):
        hid = getattr(x, "_grpo_hid", None) if isinstance(x, (Remote,) + _VALUE_CLASSES) else None
        if hid is None and isinstance(x, type):
            hid = self.cache.get(("exc-hid", x))
        if hid is None:
            raise TypeError(f"cannot pass a {type(x).__name__} to the candidate")
        return {"h": hid}

    def _deref(self, tag, v):
        if tag == "h" and type(v) is int and v >= 0:
            return self._cached(("h", v), lambda: Remote(self, v))
        if tag == "v" and type(v) is list and len(v) == 2 and type(v[0]) is int:
            value = decode(v[1], self._deref)
            cls = _VALUE_CLASS.get(type(value))
            if cls is None:
                raise ValueError("malformed builtin value")
            return self._cached(("v", v[0]), lambda: _value_object(cls, value, self, v[0]))
        if tag == "E" and type(v) is list and len(v) == 3 and type(v[0]) is int and type(v[1]) is str:
            return self._cached(("E", v[0]), lambda: self._exception_class(*v))
        if tag == "m" and type(v) is list and len(v) == 2 and type(v[0]) is str and type(v[1]) is int:
            return shared_module(v[0]) or self._deref("h", v[1])
        raise ValueError("unknown tag")

    def _snap_deref(self, tag, v):
        if tag == "o" and type(v) is list and len(v) == 3:
            if v[0] is not None:
                return ("same object", v[0])
            if type(v[1]) is int:
                return ("object of class", v[1], decode(v[2], self._snap_deref))
        raise ValueError("malformed snapshot")

    def _cached(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def _exception_class(self, hid: int, name: str, base: str) -> type:
        """A class in this process standing in for a candidate's exception class, so tests can catch it."""
        b = getattr(builtins, base, None)
        if not (isinstance(b, type) and issubclass(b, BaseException)):
            b = Exception
        elif not issubclass(b, Exception):
            b = CandidateExit
        cls = type(name if name.isidentifier() else "CandidateException", (b,), {"__module__": "candidate"})
        self.cache[("exc-hid", cls)] = hid
        return cls

    def _exception(self, reply: dict) -> BaseException:
        name, msg = reply.get("raise"), str(reply.get("msg", ""))[:300]
        if type(name) is not str:
            self.fail("malformed reply from the candidate")
        if "cls" in reply:
            try:
                cls = decode(reply["cls"], self._deref)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    return cls(msg)
            except (ValueError, TypeError, RecursionError):
                pass
        exc = getattr(builtins, name, None)
        if isinstance(exc, type) and issubclass(exc, Exception):
            try:
                return exc(msg)
            except TypeError:  # UnicodeDecodeError and friends need more arguments
                return CandidateError(f"{name}: {msg}")
        if isinstance(exc, type) and issubclass(exc, BaseException):
            return CandidateExit(f"{name}: {msg}")
        return CandidateError(f"{name}: {msg}")

    # ------------------------------------------------------------------ operations
    def call(self, fn: Remote, args: tuple, kwargs: dict):
        enc_args = [self.enc(a) for a in args]
        enc_kwargs = {"d": [[k, self.enc(v)] for k, v in kwargs.items()]}
        value, reply = self.request("call", h=fn._grpo_hid, a=enc_args, k=enc_kwargs)
        mutated = reply.get("mut")
        if type(mutated) is list:  # arguments the candidate changed in place: change the test's objects too
            for item in mutated:
                try:
                    key, new = item
                    target = args[key] if type(key) is int else kwargs[key]
                    _assign_in_place(target, self.decode(new))
                except (ValueError, TypeError, LookupError):
                    pass
        return value

    def plain(self, r: Remote) -> tuple[bool, object]:
        """(True, the object's builtin value) for a candidate object that is builtin data, else (False, None)."""
        value = r._grpo_rq("plain")
        if type(value) is not list or len(value) != 2 or type(value[0]) is not bool:
            self.fail("malformed reply from the candidate")
        return value[0], value[1]

    def equal(self, a: Remote, b) -> bool:
        if isinstance(b, Remote):
            if a._grpo_hid == b._grpo_hid:
                return True
            snaps = self.request("snap", hs=[a._grpo_hid, b._grpo_hid])[0]
            if type(snaps) is not list or len(snaps) != 2:
                self.fail("malformed reply from the candidate")
            return snaps[0] == snaps[1]
        ok, value = self.plain(a)
        return ok and value == b


def _assign_in_place(target, new) -> None:
    if type(target) is not type(new) or type(target) not in _MUTABLE:
        return
    if isinstance(target, (list, bytearray)):
        target[:] = new
    else:
        target.clear()
        target.update(new)


def _is_candidate_object(x) -> bool:
    return isinstance(x, (Remote,) + _VALUE_CLASSES)


def _binary(name: str, reflected: bool = False):
    op = getattr(operator, name)

    def method(self, other):
        if _is_candidate_object(other):  # both the candidate's: its own classes define the operation
            a, b = (other, self) if reflected else (self, other)
            return self._grpo_conn.request("binop", o=name, a=self._grpo_conn.enc(a), b=self._grpo_conn.enc(b))[0]
        ok, value = self._grpo_conn.plain(self)
        if not ok:
            return NotImplemented
        return op(other, value) if reflected else op(value, other)

    return method


def _checked(kind, value, what):
    if not isinstance(value, kind):
        raise TypeError(f"candidate's {what} returned {type(value).__name__}")
    return value


class Remote:
    """A candidate object, by handle. See the module docstring for what is forwarded and what is decided here."""

    __slots__ = ("_grpo_conn", "_grpo_hid", "__weakref__")

    def __init__(self, conn: Connection, hid: int) -> None:
        object.__setattr__(self, "_grpo_conn", conn)
        object.__setattr__(self, "_grpo_hid", hid)

    def _grpo_rq(self, op, **fields):
        return self._grpo_conn.request(op, h=self._grpo_hid, **fields)[0]

    def __getattr__(self, name):
        if name.startswith("_grpo_"):
            raise AttributeError(name)
        return self._grpo_rq("attr", n=name)

    def __setattr__(self, name, value):
        self._grpo_rq("setattr", n=name, v=self._grpo_conn.enc(value))

    def __delattr__(self, name):
        self._grpo_rq("delattr", n=name)

    def __call__(self, *args, **kwargs):
        return self._grpo_conn.call(self, args, kwargs)

    def __getitem__(self, key):
        return self._grpo_rq("item", k=self._grpo_conn.enc(key))

    def __setitem__(self, key, value):
        self._grpo_rq("setitem", k=self._grpo_conn.enc(key), v=self._grpo_conn.enc(value))

    def __delitem__(self, key):
        self._grpo_rq("delitem", k=self._grpo_conn.enc(key))

    def __len__(self):
        n = _checked(int, self._grpo_rq("len"), "__len__")
        if n < 0:
            raise ValueError("__len__() should return >= 0")
        return n

    def __iter__(self):
        it = self._grpo_rq("iter")
        return it if isinstance(it, Remote) else iter(it)

    def __next__(self):
        return self._grpo_rq("next")

    def __contains__(self, item):
        ok, value = self._grpo_conn.plain(self)
        if ok:
            return item in value
        return any(x is item or x == item for x in self)

    def __bool__(self):
        return _checked(bool, self._grpo_rq("bool"), "bool")

    def __str__(self):
        return _checked(str, self._grpo_rq("str"), "__str__")

    def __repr__(self):
        try:
            return _checked(str, self._grpo_rq("repr"), "__repr__")
        except (Exception, Broken, CandidateExit):  # noqa: BLE001 - repr is also used in error messages
            return f"<candidate object {self._grpo_hid}>"

    def __format__(self, spec):
        return _checked(str, self._grpo_rq("format", spec=spec), "__format__")

    def __hash__(self):
        return _checked(int, self._grpo_rq("hash"), "__hash__")

    def __int__(self):
        return _checked(int, self._grpo_rq("int"), "__int__")

    def __index__(self):
        return _checked(int, self._grpo_rq("index"), "__index__")

    def __float__(self):
        return float(_checked((int, float), self._grpo_rq("float"), "__float__"))

    def __complex__(self):
        return complex(_checked((int, float, complex), self._grpo_rq("complex"), "__complex__"))

    def __round__(self, n=None):
        return self._grpo_rq("round", n=n if n is None else operator.index(n))

    def __neg__(self):
        return self._grpo_rq("unary", o="neg")

    def __pos__(self):
        return self._grpo_rq("unary", o="pos")

    def __abs__(self):
        return self._grpo_rq("unary", o="abs")

    def __invert__(self):
        return self._grpo_rq("unary", o="invert")

    def __eq__(self, other):
        return self._grpo_conn.equal(self, other)

    def __ne__(self, other):
        return not self._grpo_conn.equal(self, other)

    def __instancecheck__(self, obj):
        try:
            v = self._grpo_conn.enc(obj)
        except (TypeError, ValueError):
            return False
        return _checked(bool, self._grpo_rq("isinstance", v=v), "isinstance")

    def __subclasscheck__(self, cls):
        try:
            v = self._grpo_conn.enc(cls)
        except (TypeError, ValueError):
            return False
        return _checked(bool, self._grpo_rq("issubclass", v=v), "issubclass")

    __lt__, __le__, __gt__, __ge__ = (_binary(n) for n in ("lt", "le", "gt", "ge"))
    __add__, __sub__, __mul__, __truediv__, __floordiv__, __mod__, __pow__, __matmul__ = (
        _binary(n) for n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul"))
    __lshift__, __rshift__, __and__, __or__, __xor__ = (_binary(n) for n in ("lshift", "rshift", "and_", "or_", "xor"))
    __radd__, __rsub__, __rmul__, __rtruediv__, __rfloordiv__, __rmod__, __rpow__, __rmatmul__ = (
        _binary(n, True) for n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul"))
    __rlshift__, __rrshift__, __rand__, __ror__, __rxor__ = (
        _binary(n, True) for n in ("lshift", "rshift", "and_", "or_", "xor"))


def _value_class(base: type) -> type:
    """An immutable builtin subclass of the candidate (IntEnum member, namedtuple, str subclass …) stands here
    as this builtin value, so comparisons are the builtin's; other attributes are fetched from the candidate."""

    def __getattr__(self, name):
        if name.startswith("_grpo_"):
            raise AttributeError(name)
        return self._grpo_conn.request("attr", h=self._grpo_hid, n=name)[0]

    return type("Candidate" + base.__name__.capitalize(), (base,), {"__getattr__": __getattr__,
                                                                    "__module__": "candidate"})


_VALUE_CLASS = {base: _value_class(base) for base in _VALUE_BASES}
_VALUE_CLASSES = tuple(_VALUE_CLASS.values())


def _value_object(cls, value, conn: Connection, hid: int):
    obj = cls.__mro__[1].__new__(cls, value)
    obj._grpo_conn, obj._grpo_hid = conn, hid
    return obj


def shared_module(name: str):
    """This process's own module `name` if a candidate's `import name` may be bound as it, else None."""
    if not isinstance(name, str) or name.split(".")[0] not in SHARED_MODULES:
        return None
    if not all(part.isidentifier() for part in name.split(".")):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _pure_object(origin):
    """This process's own function or class for a candidate global imported from a side-effect-free module."""
    if type(origin) is not list or len(origin) != 2 or not all(type(s) is str for s in origin):
        return None
    module, qualname = origin
    if module.split(".")[0] not in PURE_MODULES:
        return None
    obj = shared_module(module)
    for part in qualname.split("."):
        if obj is None or not part.isidentifier():
            return None
        obj = getattr(obj, part, None)
    return obj if callable(obj) else None


class Namespace:
    """Binds the candidate's globals into the test namespace (see the module docstring for the rules) and
    keeps them current: after the candidate ran code, names the tests have not rebound are re-read."""

    def __init__(self, ns: dict, conn: Connection, entry_point: str | None, setup: str = "") -> None:
        self.ns, self.conn = ns, conn
        self.allowed_builtins = {entry_point} if entry_point else set()
        setup_names = {k for k in ns if not k.startswith("__")}
        # the candidate replaces the entry point and the setup's stubs, never a helper the tests may use
        # (HumanEval/38's check decodes with the prompt's own encode_cyclic)
        self.stubs = (stub_names(setup) | {entry_point}) & setup_names
        self.protected = setup_names - self.stubs
        self.bound: dict[str, object] = {}
        self.seen_ops = -1

    def bind(self, listing: list) -> None:
        for item in listing:
            if type(item) is not list or len(item) != 3 or type(item[0]) is not str:
                self.conn.fail("malformed globals from the candidate")
            name, enc, origin = item
            if not name.isidentifier() or name.startswith("__") or name in self.protected:
                continue
            if hasattr(builtins, name) and name not in self.allowed_builtins:
                continue
            current = self.ns.get(name, _MISSING)
            if current is not _MISSING and self.bound.get(name, _MISSING) is not current and name not in self.stubs:
                continue  # the test rebound it
            value = self._value(name, enc, origin)
            if value is _MISSING:
                continue
            self.ns[name] = self.bound[name] = value
            self.stubs.discard(name)
        self.seen_ops = self.conn.ops

    def _value(self, name, enc, origin):
        if type(enc) is dict and "m" in enc:
            module_name = enc["m"][0] if type(enc["m"]) is list and enc["m"] else None
            module = shared_module(module_name)
            return module if module is not None else _MISSING
        if name in MODULE_NAMES:
            return _MISSING  # a module's name bound to something else: never a stand-in for the module
        own = _pure_object(origin)
        return own if own is not None else self.conn.decode(enc)

    def refresh(self) -> None:
        """Re-read the candidate's globals if it ran any code since they were last read."""
        if self.conn.ops == self.seen_ops:
            return
        try:
            listing = self.conn.request("globals", raw=True)[0]
        except Exception as e:  # noqa: BLE001 - listing globals never fails in a working server
            self.conn.fail(f"candidate failed to list its globals ({type(e).__name__})")
        if type(listing) is not list:
            self.conn.fail("malformed globals from the candidate")
        self.bind(listing)

    def live(self) -> "_LiveNames":
        """The mapping to exec test code with as locals: a module-level read of a candidate global after the
        candidate ran code re-reads the globals first (``assert tick() == 2 and calls == 2``)."""
        return _LiveNames(self)


class _LiveNames:
    """exec() locals for a test: reads and writes go to the test namespace (so functions the test defines
    see its names as globals); reading one of the candidate's globals refreshes them first."""

    def __init__(self, names: Namespace) -> None:
        self.names = names

    def __getitem__(self, key):
        names = self.names
        if key in names.bound and names.ns.get(key, _MISSING) is names.bound[key]:
            names.refresh()
        return names.ns[key]

    def __setitem__(self, key, value):
        self.names.ns[key] = value

    def __delitem__(self, key):
        del self.names.ns[key]

    def __contains__(self, key):
        return key in self.names.ns


_MISSING = object()


def stub_names(setup: str) -> set[str]:
    """Top-level functions and classes of `setup` whose body is only a docstring, ``pass`` or ``...``:
    the signatures a prompt gives for the candidate to write."""
    import ast

    try:
        tree = ast.parse(setup)
    except (SyntaxError, ValueError):
        return set()

    def empty(stmt) -> bool:
        return isinstance(stmt, ast.Pass) or isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)

    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and all(map(empty, node.body))}

"""The candidate side of assert-style code tests, and the value codec both sides share.

Inside the sandbox this file runs with ``__name__ == "__candidate__"``: it executes the setup and the
candidate's code as a real ``__main__`` module (registered in ``sys.modules``), lists the module's globals,
then answers requests, one JSON line each, about the objects it has handed out (see `OPS`). The trainer
process imports this file only for `encode` / `decode`; its end of the protocol is grpo.rewards._rpc_client.

What crosses: *plain data* by value — None, bool, int, float, complex, str, bytes, bytearray, list, tuple,
dict, set, frozenset, range, and the values of a few library types (Fraction, Decimal, the collections
containers, datetime, numpy arrays and scalars of numeric/str dtypes). The judge rebuilds these as its own
objects, so a value cannot bring its own ``__eq__``. Every other object stays in the candidate and crosses
as a *handle* (``{"h": id}``); the judge's proxy forwards attribute access, calls, indexing and iteration,
but decides equality itself (see grpo.rewards._rpc_client.Remote).
"""
import json
import os
import sys
import types

MAX_DEPTH = 64
_SMALL_INT = 1 << 62
_IMMUTABLE_BASES = (int, float, complex, str, bytes, tuple, frozenset)
_MUTABLE_BASES = (list, dict, set, bytearray)
_NUMPY_KINDS = "biufcU"
_IDENTITY_TYPES = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType)


def _mod(name):
    return sys.modules.get(name)


def _library_encode(x, t, enc):
    """Values of standard library / numpy types, or None. Looked up only if the candidate imported them."""
    m = _mod("fractions")
    if m is not None and t is m.Fraction:
        return {"q": [enc(x.numerator), enc(x.denominator)]}
    m = _mod("decimal")
    if m is not None and t is m.Decimal:
        return {"D": str(x)}
    m = _mod("collections")
    if m is not None:
        if t is m.deque:
            return {"Q": [[enc(v) for v in x], x.maxlen]}
        if t is m.Counter:
            return {"C": [[enc(k), enc(v)] for k, v in x.items()]}
        if t is m.OrderedDict:
            return {"O": [[enc(k), enc(v)] for k, v in x.items()]}
        if t is m.defaultdict:
            f = x.default_factory
            name = f.__name__ if f in (int, float, str, list, dict, set, tuple) else None
            return {"dd": [name, [[enc(k), enc(v)] for k, v in x.items()]]}
    m = _mod("datetime")
    if m is not None and t in (m.date, m.datetime, m.time, m.timedelta):
        if t is m.timedelta:
            return {"dt": ["timedelta", [x.days, x.seconds, x.microseconds]]}
        if getattr(x, "tzinfo", None) is None:
            return {"dt": [t.__name__, x.isoformat()]}
    m = _mod("numpy")
    if m is not None:
        if t is m.ndarray and x.dtype.kind in _NUMPY_KINDS and x.size <= 10_000_000:
            return {"np": [x.dtype.str, list(x.shape), [enc(v) for v in x.ravel().tolist()]]}
        if isinstance(x, m.generic) and x.dtype.kind in _NUMPY_KINDS:
            return {"ns": [x.dtype.str, enc(x.item())]}
    return None


def encode(x, ref, depth=0):
    """JSON-able form of `x`. Exact plain types by value; anything else is `ref(x)` (a handle, or on the
    judge's side a TypeError for objects that cannot cross)."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -_SMALL_INT < x < _SMALL_INT else {"x": format(x, "x")}
    if t is float:
        return x

    def enc(v):
        return encode(v, ref, depth + 1)

    if t is list:
        return [enc(v) for v in x]
    if t is tuple:
        return {"t": [enc(v) for v in x]}
    if t is dict:
        return {"d": [[enc(k), enc(v)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"S" if t is set else "F": [enc(v) for v in x]}
    if t is bytes:
        return {"y": x.hex()}
    if t is bytearray:
        return {"Y": x.hex()}
    if t is complex:
        return {"c": [x.real, x.imag]}
    if t is range:
        return {"r": [enc(x.start), enc(x.stop), enc(x.step)]}
    lib = _library_encode(x, t, enc)
    return lib if lib is not None else ref(x)


_HEX = frozenset("0123456789abcdef-")
_DT_KINDS = ("date", "datetime", "time", "timedelta")


def _dtype(spec):
    """A numpy dtype from a string the other side sent: numeric or unicode kinds only."""
    import re
    if not isinstance(spec, str) or not re.fullmatch(r"[<>|=]?([biufc][1248]|c16|U\d{1,5})", spec):
        raise ValueError("malformed dtype")
    return spec


def _library_decode(tag, v, dec):
    if tag == "q" and type(v) is list and len(v) == 2:
        from fractions import Fraction
        return Fraction(_int(dec(v[0])), _int(dec(v[1])))
    if tag == "D" and type(v) is str and len(v) < 10_000:
        from decimal import Decimal
        return Decimal(v)
    if tag in "QCO" and type(v) is list:
        import collections
        if tag == "Q" and len(v) == 2 and type(v[0]) is list and (v[1] is None or type(v[1]) is int):
            return collections.deque([dec(i) for i in v[0]], v[1])
        items = [_pair(p, dec) for p in v]
        return collections.Counter(dict(items)) if tag == "C" else collections.OrderedDict(items)
    if tag == "dd" and type(v) is list and len(v) == 2 and type(v[1]) is list:
        import collections
        factories = {"int": int, "float": float, "str": str, "list": list, "dict": dict, "set": set, "tuple": tuple}
        return collections.defaultdict(factories.get(v[0]), [_pair(p, dec) for p in v[1]])
    if tag == "dt" and type(v) is list and len(v) == 2 and v[0] in _DT_KINDS:
        import datetime
        if v[0] == "timedelta":
            days, secs, micros = (_int(i) for i in v[1])
            return datetime.timedelta(days, secs, micros)
        if type(v[1]) is not str or len(v[1]) > 64:
            raise ValueError("malformed datetime")
        return getattr(datetime, v[0]).fromisoformat(v[1])
    if tag == "np" and type(v) is list and len(v) == 3 and type(v[1]) is list and type(v[2]) is list:
        dtype, shape, flat = _dtype(v[0]), [_int(n) for n in v[1]], [dec(i) for i in v[2]]
        size = 1
        for n in shape:
            if n < 0:
                raise ValueError("malformed shape")
            size *= n
        if size != len(flat) or len(shape) > 32:
            raise ValueError("malformed array")
        try:
            import numpy
        except ImportError:
            return flat
        return numpy.array(flat, dtype=dtype).reshape(shape)
    if tag == "ns" and type(v) is list and len(v) == 2:
        dtype, value = _dtype(v[0]), dec(v[1])
        try:
            import numpy
        except ImportError:
            return value
        return numpy.array(value, dtype=dtype)[()]
    raise ValueError(f"malformed value tag {tag!r}")


def _int(v):
    if type(v) is not int:
        raise ValueError("expected an int")
    return v


def _pair(p, dec):
    if type(p) is not list or len(p) != 2:
        raise ValueError("malformed pair")
    return dec(p[0]), dec(p[1])


def decode(x, deref, depth=0):
    """The value `encode` made. Tags it does not know go to `deref(tag, value)` (handles). Raises ValueError
    or TypeError on anything malformed, so the judge can treat the reply as broken."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x

    def dec(v):
        return decode(v, deref, depth + 1)

    if t is list:
        return [dec(v) for v in x]
    if t is not dict or len(x) != 1:
        raise ValueError("malformed value")
    (tag, v), = x.items()
    if tag == "x" and type(v) is str and 0 < len(v) <= 1 << 22 and set(v) <= _HEX:
        return int(v, 16)
    if tag in ("t", "S", "F") and type(v) is list:
        items = [dec(i) for i in v]
        return tuple(items) if tag == "t" else set(items) if tag == "S" else frozenset(items)
    if tag == "d" and type(v) is list:
        return dict(_pair(p, dec) for p in v)
    if tag in ("y", "Y") and type(v) is str:
        return bytes.fromhex(v) if tag == "y" else bytearray.fromhex(v)
    if tag == "c" and type(v) is list and len(v) == 2 and all(type(i) in (int, float) for i in v):
        return complex(v[0], v[1])
    if tag == "r" and type(v) is list and len(v) == 3:
        return range(*(_int(dec(i)) for i in v))
    if tag in ("h", "v", "E", "m", "o"):
        return deref(tag, v)
    return _library_decode(tag, v, dec)


# ------------------------------------------------------------------------------------------------ server
def _plain_base(x):
    """(True, the builtin value) for an instance of a builtin subclass, else (False, None)."""
    for base in _IMMUTABLE_BASES + _MUTABLE_BASES:
        if isinstance(x, base):
            return True, (str.__str__(x) if base is str else base(x))
    return False, None


class _Server:
    """The objects handed out (by handle id) and the request handlers."""

    def __init__(self, ns):
        self.ns, self.objs, self.ids = ns, [], {}

    def hid(self, x):
        h = self.ids.get(id(x))
        if h is None:
            h = self.ids[id(x)] = len(self.objs)
            self.objs.append(x)
        return h

    def ref(self, x):
        """A handle for a non-plain object, with what the judge needs to stand in for it."""
        if isinstance(x, types.ModuleType):
            return {"m": [x.__name__, self.hid(x)]}
        if isinstance(x, type) and issubclass(x, BaseException):
            base = next((c for c in x.__mro__ if c.__module__ == "builtins"), Exception)
            return {"E": [self.hid(x), x.__name__, base.__name__]}
        if isinstance(x, _IMMUTABLE_BASES):
            ok, value = _plain_base(x)
            return {"v": [self.hid(x), encode(value, self.ref)]}
        return {"h": self.hid(x)}

    def deref(self, tag, v):
        if tag in ("h", "v", "E") and type(v) in (int, list):
            h = v if type(v) is int else v[0]
            if type(h) is int and 0 <= h < len(self.objs):
                return self.objs[h]
        raise ValueError("unknown handle")

    def enc(self, x):
        return encode(x, self.ref)

    def dec(self, x):
        return decode(x, self.deref)

    def obj(self, req):
        return self.deref("h", req.get("h"))

    def snapshot(self, x, seen):
        """What equality of two candidate objects is decided on, in the judge: identity for classes that do
        not define __eq__ (and for functions, classes, modules), else the class and the state."""

        def sref(o):
            cls = type(o)
            if id(o) in seen or cls.__eq__ is object.__eq__ or isinstance(o, _IDENTITY_TYPES):
                return {"o": [self.hid(o), None, None]}
            seen.add(id(o))
            dc = _mod("dataclasses")
            if dc is not None and dc.is_dataclass(o):
                state = {f.name: getattr(o, f.name) for f in dc.fields(o) if f.compare}
            else:
                state = dict(getattr(o, "__dict__", {}))
                for c in cls.__mro__:
                    for s in getattr(c, "__slots__", ()):
                        if isinstance(s, str) and hasattr(o, s) and s not in ("__dict__", "__weakref__"):
                            state[s] = getattr(o, s)
            ok, base = _plain_base(o)
            if ok:
                state["__base__"] = base
            return {"o": [None, self.hid(cls), encode(state, sref)]}

        return encode(x, sref)

    def globals_listing(self):
        """[name, value, origin] for the module's globals; big values go by handle (live), not by value."""
        out = []
        for name, value in list(self.ns.items()):
            if type(name) is not str or name.startswith("__"):
                continue
            try:
                enc = encode(value, self.ref) if _small(value, 20000) >= 0 else {"h": self.hid(value)}
            except (ValueError, RecursionError):
                enc = {"h": self.hid(value)}
            origin = None
            if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
                m, q = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
                if isinstance(m, str) and isinstance(q, str) and m != "__main__":
                    origin = [m, q]
            out.append([name, enc, origin])
        return out


def _small(x, left):
    """What is left of a budget of `left` values after counting data `x` (negative: too big)."""
    t = type(x)
    if t in (str, bytes, bytearray):
        return left - 1 - len(x) // 64
    m = _mod("collections")
    if isinstance(x, (list, tuple, set, frozenset, dict)) or m is not None and isinstance(x, m.deque):
        if len(x) > left:
            return -1
        for v in (x.items() if isinstance(x, dict) else x):
            left = _small(v, left - 1)
            if left < 0:
                return left
        return left
    m = _mod("numpy")
    if m is not None and isinstance(x, m.ndarray):
        return left - x.size
    return left - 1


def _handle_call(srv, req):
    fn = srv.obj(req)
    args = srv.dec(req.get("a", []))
    kwargs = srv.dec(req.get("k", {"d": []}))
    if type(args) is not list or type(kwargs) is not dict:
        raise TypeError("malformed call")
    watched = {i: json.dumps(srv.enc(a)) for i, a in enumerate(args) if type(a) in _MUTABLE_BASES}
    watched.update({k: json.dumps(srv.enc(a)) for k, a in kwargs.items() if type(a) in _MUTABLE_BASES})
    result = fn(*args, **kwargs)
    changed = []
    for key, before in watched.items():
        now = srv.enc(args[key] if type(key) is int else kwargs[key])
        if json.dumps(now) != before:
            changed.append([key, now])
    return result, ({"mut": changed} if changed else {})


def _binop(name):
    import operator
    allowed = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "lshift", "rshift", "and_",
               "or_", "xor", "lt", "le", "gt", "ge"}
    if name not in allowed:
        raise ValueError("unknown operator")
    return getattr(operator, name)


def _unary(name):
    import operator
    if name not in ("neg", "pos", "abs", "invert"):
        raise ValueError("unknown operator")
    return getattr(operator, name)


OPS = {
    "call": _handle_call,
    "attr": lambda s, r: getattr(s.obj(r), str(r["n"])),
    "setattr": lambda s, r: setattr(s.obj(r), str(r["n"]), s.dec(r["v"])),
    "delattr": lambda s, r: delattr(s.obj(r), str(r["n"])),
    "item": lambda s, r: s.obj(r)[s.dec(r["k"])],
    "setitem": lambda s, r: s.obj(r).__setitem__(s.dec(r["k"]), s.dec(r["v"])),
    "delitem": lambda s, r: s.obj(r).__delitem__(s.dec(r["k"])),
    "len": lambda s, r: len(s.obj(r)),
    "iter": lambda s, r: iter(s.obj(r)),
    "next": lambda s, r: next(s.obj(r)),
    "bool": lambda s, r: bool(s.obj(r)),
    "str": lambda s, r: str(s.obj(r)),
    "repr": lambda s, r: repr(s.obj(r)),
    "hash": lambda s, r: hash(s.obj(r)),
    "int": lambda s, r: int(s.obj(r)),
    "float": lambda s, r: float(s.obj(r)),
    "index": lambda s, r: s.obj(r).__index__(),
    "complex": lambda s, r: complex(s.obj(r)),
    "format": lambda s, r: format(s.obj(r), str(r.get("spec", ""))),
    "round": lambda s, r: round(s.obj(r)) if r.get("n") is None else round(s.obj(r), int(r["n"])),
    "unary": lambda s, r: _unary(r["o"])(s.obj(r)),
    "binop": lambda s, r: _binop(r["o"])(s.dec(r["a"]), s.dec(r["b"])),
    "plain": lambda s, r: list(_plain_base(s.obj(r))),
    "isinstance": lambda s, r: isinstance(s.dec(r["v"]), s.obj(r)),
    "issubclass": lambda s, r: issubclass(s.dec(r["v"]), s.obj(r)),
    "globals": lambda s, r: _Raw(s.globals_listing()),
    "snap": lambda s, r: _Raw([s.snapshot(s.deref("h", h), set()) for h in r["hs"]]),
}


class _Raw:
    """A reply that is already in wire form (not to be encoded again)."""

    def __init__(self, value):
        self.value = value


def _exception_reply(srv, e):
    try:
        msg = str(e)[:300]
    except BaseException:  # noqa: BLE001 - a candidate's __str__ may raise anything
        msg = ""
    cls = type(e)
    out = {"raise": cls.__name__, "msg": msg}
    if cls.__module__ != "builtins":
        try:
            out["cls"] = srv.ref(cls)
        except BaseException:  # noqa: BLE001
            pass
    return out


def _serve(rpc_in, rpc_out):
    import builtins

    reader = os.fdopen(rpc_in, "rb")

    def send(obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(rpc_out, data):]

    module = types.ModuleType("__main__")
    module.__file__ = os.path.abspath("main.py")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    srv = _Server(module.__dict__)
    status = "ok"
    for name in ("setup.py", "main.py"):
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                exec(compile(f.read(), name, "exec"), module.__dict__)
        except BaseException as e:  # noqa: BLE001 - keep what was defined; the tests decide
            status = type(e).__name__
    send({"hello": status, "g": srv.globals_listing()})
    for line in reader:
        try:
            req = json.loads(line)
            result = OPS[req["op"]](srv, req)
            extra = {}
            if type(result) is tuple and req["op"] == "call":
                result, extra = result
            reply = {"ok": result.value if isinstance(result, _Raw) else srv.enc(result), **extra}
        except BaseException as e:  # noqa: BLE001 - the judge maps it to an exception in the test
            reply = _exception_reply(srv, e)
        try:
            send(reply)
        except (TypeError, ValueError, RecursionError, OverflowError) as e:
            send({"raise": type(e).__name__, "msg": "reply could not be encoded"})


if __name__ == "__candidate__":
    _serve(*__rpc__)  # noqa: F821 - provided by the sandbox bootstrap

"""The candidate side of assert-style code tests, and the value codec both sides share.

Inside the sandbox this file runs with ``__name__ == "__candidate__"``: it executes the setup and the
candidate's code, reports which callables exist, then answers calls ``{"call", "args", "kwargs"}`` with
encoded results. Only plain data crosses (None, bool, int, float, complex, str, bytes, list, tuple,
dict, set, frozenset), so a returned object cannot carry its own ``__eq__`` into the judge. The trainer
process imports this file only for `encode` / `decode`.
"""
import json
import os

MAX_DEPTH = 50


def encode(x, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t, d = type(x), depth + 1
    if x is None:
        return {"n": 0}
    if t is bool:
        return {"b": x}
    if t is int:
        return {"i": str(x)}
    if t is float:
        return {"f": repr(x)}
    if t is complex:
        return {"c": [repr(x.real), repr(x.imag)]}
    if t is str:
        return {"s": x}
    if t is bytes:
        return {"y": x.hex()}
    if t in (list, tuple, set, frozenset):
        items = sorted(x, key=repr) if t in (set, frozenset) else x
        return {{list: "l", tuple: "t", set: "S", frozenset: "F"}[t]: [encode(v, d) for v in items]}
    if t is dict:
        return {"d": [[encode(k, d), encode(v, d)] for k, v in x.items()]}
    raise TypeError(f"cannot pass a {t.__name__} across the sandbox boundary")


def decode(x, depth=0):
    if depth > MAX_DEPTH or not isinstance(x, dict) or len(x) != 1:
        raise ValueError("malformed value")
    (tag, v), d = next(iter(x.items())), depth + 1
    if tag == "n":
        return None
    if tag == "b" and type(v) is bool:
        return v
    if tag == "i" and type(v) is str and len(v) < 5000:
        return int(v)
    if tag == "f" and type(v) is str:
        return float(v)
    if tag == "c" and type(v) is list and len(v) == 2:
        return complex(float(v[0]), float(v[1]))
    if tag == "s" and type(v) is str:
        return v
    if tag == "y" and type(v) is str:
        return bytes.fromhex(v)
    if tag in "ltSF" and type(v) is list:
        items = [decode(i, d) for i in v]
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
    if tag == "d" and type(v) is list:
        return {decode(k, d): decode(val, d) for k, val in v}
    raise ValueError(f"malformed value tag {tag!r}")


def _serve(rpc_in, rpc_out):
    reader = os.fdopen(rpc_in, "rb")

    def send(obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(rpc_out, data):]

    ns = {"__name__": "__main__"}
    status = "ok"
    for name in ("setup.py", "main.py"):
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                exec(compile(f.read(), name, "exec"), ns)
        except BaseException as e:  # noqa: BLE001 - report and keep what was defined
            status = type(e).__name__
    names = sorted(k for k, v in list(ns.items()) if callable(v) and not k.startswith("__"))
    send({"loaded": status, "names": names})
    for line in reader:
        req = json.loads(line)
        try:
            fn = ns[req["call"]]
            args = decode(req["args"])
            kwargs = decode(req["kwargs"])
            send({"ok": encode(fn(*args, **kwargs))})
        except BaseException as e:  # noqa: BLE001 - the judge turns this into a failed call
            try:
                send({"raise": type(e).__name__, "msg": str(e)[:200]})
            except BaseException:  # noqa: BLE001
                send({"raise": "Exception", "msg": ""})


if __name__ == "__candidate__":
    _serve(*__rpc__)  # noqa: F821 - provided by the sandbox bootstrap

#!/usr/bin/env python3
"""Guests through Invicta, call by call, against a second reference host: the `wasmtime`
package from PyPI (its own build of wasmtime, its own WASI), with no Invicta code in between.

Each guest is compiled by the reference host and called in one instance, in the same order as
its worker is invoked over Invicta's API; every answer must be the same, and what the guest
prints must be what the worker logged. Then the server is killed with SIGKILL, started again,
and the workers must answer on as the reference instance does.

    reference.py <invicta binary> <components dir>
"""

import importlib.metadata
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request

import wasmtime
import wasmtime.component as wc

# (guest, function, parameters as the API takes them)
CALLS = [
    ("types", "echo-u8", [255]),
    ("types", "echo-s64", [-9_007_199_254_740_991]),
    ("types", "echo-f64", [2.5]),
    ("types", "echo-char", ["é"]),
    ("types", "echo-string", ["héllo, wörld"]),
    ("types", "echo-list", [[1, 2, 3]]),
    ("types", "echo-tuple", [[7, "seven"]]),
    ("types", "echo-record", [{"name": "Ada", "age": 36, "email": None, "tags": ["x"]}]),
    ("types", "echo-variant", [{"circle": 1.5}]),
    ("types", "echo-enum", ["green"]),
    ("types", "echo-option", [None]),
    ("types", "echo-flags", [["read", "exec"]]),
    ("counter", "add", [5]),
    ("counter", "add", [-2]),
    ("counter", "get", []),
    ("wasi020", "shout", ["from WASI 0.2.0"]),
    ("wasi020", "args", []),
    ("hello_cli", "run", []),
    ("types_old", "echo-record", [{"name": "Grace", "age": 85, "email": "g@navy.mil", "tags": []}]),
    ("types_old", "echo-variant", [{"square": 2.0}]),
    ("types_old", "echo-list", [[[1, 2], [], [3]]]),
    ("types_old", "add", [3]),
]
# A worker's files (Rust `std::fs`), against wasmtime-py with a directory preopened at `/` that
# holds the same initial file: what it reads, writes and lists is the same (listings compare as
# sets: Invicta sorts them, a host directory has its own order).
FILES = [
    ("files", "read-text", ["/data/notes.txt"]),
    ("files", "append-text", ["/data/notes.txt", " second"]),
    ("files", "make-dir", ["/out/deep"]),
    ("files", "write-text", ["/out/c.txt", "c"]),
    ("files", "write-text", ["/out/a.txt", "a"]),
    ("files", "write-text", ["/out/deep/b.txt", "bee"]),
    ("files", "list-dir", ["/out"]),
    ("files", "remove-file", ["/out/a.txt"]),
    ("files", "rename-file", ["/out/c.txt", "/out/deep/c.txt"]),
    ("files", "list-dir", ["/out/deep"]),
    ("files", "read-text", ["/data/notes.txt"]),
    ("files", "read-text", ["/missing"]),
    ("files", "read-text", ["/out"]),
]
CALLS += FILES
AFTER_KILL = [
    ("counter", "add", [1]),
    ("types", "echo-string", ["again"]),
    ("types_old", "add", [4]),
    ("files", "read-text", ["/data/notes.txt"]),
    ("files", "list-dir", ["/out/deep"]),
    ("files", "read-text", ["/out/deep/c.txt"]),
]
# The initial files the `files` guest's version carries.
INITIAL_FILES = {"data/notes.txt": b"first"}


def to_python(value, function):
    """A parameter as the API takes it, as wasmtime-py takes it (by the function's name)."""
    if function == "echo-record":
        record = wc.Record()
        for key, item in value.items():
            setattr(record, key, item)
        return record
    if function == "echo-variant":
        (tag, payload), = value.items()
        return wc.Variant(tag, payload)
    if function == "echo-tuple":
        return tuple(value)
    if function == "echo-flags":
        return set(value)
    return value


def to_api(value):
    """What wasmtime-py answered, in the API's JSON mapping."""
    if isinstance(value, wc.Record):
        return {k: to_api(v) for k, v in vars(value).items()}
    if isinstance(value, wc.Variant):
        return {value.tag: to_api(value.payload)}
    if isinstance(value, (list, tuple)):
        return [to_api(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value


def comparable(value):
    """Flags and listings compare as sets: the API lists flags in declaration order, and a
    worker's directory listings sorted."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    return value


class Reference:
    """One instance per guest under wasmtime-py, with its stdout in a file."""

    def __init__(self, engine, path, out, root=None):
        component = wc.Component.from_file(engine, path)
        linker = wc.Linker(engine)
        linker.add_wasip2()
        self.store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_file = out
        if root is not None:
            wasi.preopen_dir(root, "/")
        self.store.set_wasi(wasi)
        self.instance = linker.instantiate(self.store, component)
        self.out = out

    def call(self, function, params, interface=None):
        parent = self.instance.get_export_index(self.store, interface) if interface else None
        index = (self.instance.get_export_index(self.store, function, parent)
                 if parent else self.instance.get_export_index(self.store, function))
        if index is None:
            raise AssertionError(f"{function} is not exported")
        func = self.instance.get_func(self.store, index)
        result = func(self.store, *params)
        func.post_return(self.store)
        return to_api(result)

    def printed(self):
        with open(self.out, encoding="utf-8") as f:
            return f.read()


def start(invicta, data):
    server = subprocess.Popen(
        [invicta, "server", "--listen", "127.0.0.1:0", "--data-dir", data],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    found, ready = {}, threading.Event()

    def read():
        for line in server.stdout:
            m = re.search(r"operator key \(shown once.*\): (\S+)", line)
            if m:
                found["operator"] = m.group(1)
            m = re.match(r"invicta listening on (http://\S+)", line)
            if m:
                found["base"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60) or "base" not in found:
        server.kill()
        raise SystemExit("the server did not start")
    return server, found


def request(method, url, key, body=None, content_type="application/json"):
    data = None
    headers = {"authorization": f"Bearer {key}"}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["content-type"] = content_type
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main():
    invicta, components = (os.path.abspath(p) for p in sys.argv[1:3])
    engine = wasmtime.Engine()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        server, found = start(invicta, data)
        base, operator = found["base"], found["operator"]
        status, tenant = request("POST", f"{base}/v1/admin/tenants", operator, {"name": "reference", "plan": "pro"})
        assert status == 201, tenant
        status, created = request("POST", f"{base}/v1/admin/tenants/{tenant['id']}/keys", operator,
                                  {"scopes": ["admin", "deploy", "invoke", "read"]})
        assert status == 201, created
        key = created["key"]
        guests = sorted({g for g, _, _ in CALLS})
        runs = {}
        reference = {}
        for guest in guests:
            path = os.path.join(components, f"{guest}.wasm")
            root = None
            if guest == "files":
                # The same files: in the version's archive, and in the reference's directory.
                root = os.path.join(tmp, "reference-root")
                bundle = io.BytesIO()
                with tarfile.open(fileobj=bundle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    tar.add(path, arcname="component.wasm")
                    for name, content in INITIAL_FILES.items():
                        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
                        with open(os.path.join(root, name), "wb") as f:
                            f.write(content)
                        info = tarfile.TarInfo(f"files/{name}")
                        info.size = len(content)
                        tar.addfile(info, io.BytesIO(content))
                body, content_type = bundle.getvalue(), "application/x-tar"
            else:
                with open(path, "rb") as f:
                    body, content_type = f.read(), "application/wasm"
            status, shown = request("POST", f"{base}/v1/components/{guest}", key, body, content_type)
            assert status == 201, (guest, shown)
            runs[guest] = next((e["name"] for e in shown["exports"] if e["name"].startswith("wasi:cli/run@")), None)
            reference[guest] = Reference(engine, path, os.path.join(tmp, f"{guest}.out"), root)

        def invoke(guest, function, params):
            name = runs[guest] if function == "run" else function
            status, body = request("POST", f"{base}/v1/components/{guest}/workers/w/invoke", key,
                                   {"function": name, "params": params})
            if status != 200:
                raise AssertionError(f"{guest}.{name}: {status} {body}")
            return body["result"]

        def expect(guest, function, params):
            if function == "run":
                # `wasi:cli/run@0.2.x.{run}`: the interface, then the function.
                interface = runs[guest].removesuffix(".{run}")
                return reference[guest].call("run", [], interface)
            answer = reference[guest].call(function, [to_python(p, function) for p in params])
            # wasmtime-py answers a `result`'s `ok` bare when its type tells it from `err` (None
            # for `result<_, E>`), and as a variant when it cannot; the API always as {"ok": …}.
            if guest == "files" and not (isinstance(answer, dict) and set(answer) <= {"ok", "err"}):
                return {"ok": answer}
            return answer

        for guest, function, params in CALLS:
            want = expect(guest, function, params)
            got = invoke(guest, function, params)
            if comparable(got) != comparable(want):
                failures.append(f"{guest}.{function}{params}: Invicta {got!r}, wasmtime-py {want!r}")
        for guest in ("wasi020", "hello_cli"):
            status, logs = request("GET", f"{base}/v1/components/{guest}/workers/w/logs", key)
            logged = "".join(l["text"] for l in logs["lines"] if l["stream"] == "stdout")
            if logged != reference[guest].printed():
                failures.append(f"{guest} printed {reference[guest].printed()!r}, the worker logged {logged!r}")

        server.send_signal(signal.SIGKILL)
        server.wait()
        server, found = start(invicta, data)
        base = found["base"]
        for guest, function, params in AFTER_KILL:
            want = expect(guest, function, params)
            got = invoke(guest, function, params)
            if comparable(got) != comparable(want):
                failures.append(f"after SIGKILL {guest}.{function}{params}: Invicta {got!r}, wasmtime-py {want!r}")
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    version = importlib.metadata.version("wasmtime")
    print(f"reference host (wasmtime-py {version}): {len(CALLS) + len(AFTER_KILL)} calls compared")
    if failures:
        for failure in failures:
            print(f"FAIL {failure}")
        sys.exit(1)
    print("reference host: all the same")


if __name__ == "__main__":
    main()

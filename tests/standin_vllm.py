#!/usr/bin/env python3
"""A STAND-IN for ``vllm serve`` in the test base image (no GPU or torch here): it takes
vLLM's command line, serves /health, /v1/models and /v1/chat/completions (tool calls too) on
--host/--port as --served-model-name, and requires VLLM_API_KEY as a bearer token when set,
as vLLM does. MODE "fail" exits at start like a vLLM that cannot load its model;
$VLLM_RIGKIT_STANDIN_LOAD_SECONDS makes it answer nothing for that long first (a load).

With ``--distributed-executor-backend ray`` it is a Ray driver as vLLM is (Ray must be in the
image): it joins the cluster at $RAY_ADDRESS (else "auto"; exit 1 if it cannot), places one
actor on every alive node, prints ``stand-in vllm: Ray workers on <host>(<ip>), ...`` and only
then serves, with GET /rigkit-standin/ray -> {"nodes": [{"ip", "hostname"}, ...]} (no auth).
Like vLLM's engine it watches its workers (a ping every 2 s, 10 s timeout): when one dies it
prints ``stand-in vllm: Ray worker on <ip> died; engine dead`` and exits with 1."""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = "serve"
args = sys.argv[1:]
if args[:1] == ["serve"]:
    args = args[1:]
if MODE == "fail":
    print("stand-in vllm: simulated start failure (RuntimeError: CUDA graph capture failed)", flush=True)
    sys.exit(3)
# A load that takes this long before anything answers (a real 122B load takes ~15 minutes).
LOAD_SECONDS = float(os.environ.get("VLLM_RIGKIT_STANDIN_LOAD_SECONDS", "0"))
if LOAD_SECONDS:
    print(f"stand-in vllm: loading for {LOAD_SECONDS:g}s", flush=True)
    time.sleep(LOAD_SECONDS)


def flag(name, default=None):
    return args[args.index(name) + 1] if name in args else default


MODEL = args[0]
NAME = flag("--served-model-name", MODEL)
KEY = os.environ.get("VLLM_API_KEY")
print(
    f"stand-in vllm serve {MODEL} as {NAME} on {flag('--host')}:{flag('--port')}; argv {json.dumps(args)}", flush=True
)
RAY_NODES = None  # [{"ip", "hostname"}, ...] with --distributed-executor-backend ray


def ray_workers():
    """Join the Ray cluster, one actor per alive node; a thread that ends the process when one
    of them dies. Returns the nodes as [{"ip", "hostname"}, ...]."""
    import socket

    import ray

    address = os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as e:  # ConnectionError, or what Ray raises when there is no cluster
        print(f"stand-in vllm: cannot connect to the Ray cluster at {address}: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)

    @ray.remote(num_cpus=0)
    class Worker:
        def where(self):
            return {"ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname()}

        def ping(self):
            return True

    # vLLM pins its workers with the node:<ip> resources: one actor per address.
    ips = list(dict.fromkeys(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]))
    actors = {ip: Worker.options(resources={f"node:{ip}": 0.001}).remote() for ip in ips}
    try:
        nodes = ray.get([a.where.remote() for a in actors.values()], timeout=120)
    except Exception as e:
        print(f"stand-in vllm: Ray workers did not start on {', '.join(ips)}: {type(e).__name__}: {e}", flush=True)
        os._exit(1)
    print("stand-in vllm: Ray workers on " + ", ".join(f"{n['hostname']}({n['ip']})" for n in nodes), flush=True)

    def watch():
        while True:
            time.sleep(2)
            for ip, actor in actors.items():
                try:
                    ray.get(actor.ping.remote(), timeout=10)
                except Exception as e:  # RayActorError, GetTimeoutError, ...
                    print(f"stand-in vllm: no answer from the Ray worker on {ip}: {type(e).__name__}", flush=True)
                    print(f"stand-in vllm: Ray worker on {ip} died; engine dead", flush=True)
                    os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    return nodes


if flag("--distributed-executor-backend") == "ray":
    RAY_NODES = ray_workers()


class Handler(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if KEY and self.headers.get("Authorization") != f"Bearer {KEY}":
            self.reply(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {})
        if self.path == "/rigkit-standin/ray" and RAY_NODES is not None:
            return self.reply(200, {"nodes": RAY_NODES})
        if self.path == "/v1/models" and self.authorized():
            return self.reply(200, {"object": "list", "data": [{"id": NAME, "object": "model"}]})
        if self.path != "/v1/models":
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": "not found"})
        if not self.authorized():
            return
        if body.get("model") != NAME:
            return self.reply(404, {"error": f"model {body.get('model')} does not exist"})
        return self.reply(
            200,
            {
                "object": "chat.completion",
                "model": NAME,
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello."}}
                ],
            },
        )

    def log_message(self, *a):
        pass


ThreadingHTTPServer((flag("--host", "127.0.0.1"), int(flag("--port", "8000"))), Handler).serve_forever()

#!/usr/bin/env python3
"""A STAND-IN for ``vllm serve`` in the test base image (no GPU or torch here): it takes
vLLM's command line, serves /health, /v1/models and /v1/chat/completions (tool calls too) on
--host/--port as --served-model-name, and requires VLLM_API_KEY as a bearer token when set,
as vLLM does. MODE "fail" exits at start like a vLLM that cannot load its model."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = "serve"
args = sys.argv[1:]
if args[:1] == ["serve"]:
    args = args[1:]
if MODE == "fail":
    print("stand-in vllm: simulated start failure (RuntimeError: CUDA graph capture failed)", flush=True)
    sys.exit(3)


def flag(name, default=None):
    return args[args.index(name) + 1] if name in args else default


MODEL = args[0]
NAME = flag("--served-model-name", MODEL)
KEY = os.environ.get("VLLM_API_KEY")
print(
    f"stand-in vllm serve {MODEL} as {NAME} on {flag('--host')}:{flag('--port')}; argv {json.dumps(args)}", flush=True
)


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

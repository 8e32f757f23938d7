#!/usr/bin/env python3
"""One image for a whole Ray cluster: the head serves the image it built, the other nodes
load that exact image (python3 stdlib only; run by rigkit.operations.cluster_share).

    image_share.py serve --address 192.168.100.11 --port 8470 --image rigkit/vllm:0123456789abcdef
    image_share.py load --url http://192.168.100.11:8470 --image rigkit/vllm:0123456789abcdef

``serve`` (on the head, as a transient ``Type=notify`` unit for the deploy's duration, bound
to the interconnect address only) answers two paths for that one image and nothing else:
``/image-id`` (its ID) and ``/image`` (``docker save`` of it, streamed). ``load`` (on a
node) asks the ID first: an image this node already holds is only tagged, else the stream
goes straight into ``docker load``; either way the node's tag must then name the head's
ID, or the load fails naming both IDs. Exit 0 with "held" or "loaded" on its last line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXIT_FAIL = 1
EXIT_USAGE = 2
CHUNK = 1 << 20
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)


def image_id(image: str) -> str | None:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def notify_ready() -> None:
    """Tell systemd (a ``Type=notify`` unit) that the server listens: its start then ends."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect("\0" + target[1:] if target.startswith("@") else target)
        s.sendall(b"READY=1")


def serve(address: str, port: int, image: str) -> int:
    if image_id(image) is None:
        print("image_share: %s is not in this node's Docker" % image, file=sys.stderr)
        return EXIT_FAIL

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends with the connection: a stream of unknown size

        def log_message(self, fmt, *args):
            sys.stderr.write("image_share: %s %s\n" % (self.address_string(), fmt % args))

        def do_GET(self):
            found = image_id(image)  # asked again: the tag could have moved since the start
            if self.path not in ("/image-id", "/image") or found is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("X-Image-Id", found)
            if self.path == "/image-id":
                body = (found + "\n").encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Content-Type", "application/x-tar")
            self.end_headers()
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            assert save.stdout is not None
            try:
                shutil.copyfileobj(save.stdout, self.wfile, CHUNK)
            finally:
                save.stdout.close()
                save.wait()

    server = ThreadingHTTPServer((address, port), Handler)
    print("image_share: serving %s on %s:%d" % (image, address, port), file=sys.stderr)
    notify_ready()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def load(url: str, image: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url + "/image-id", timeout=timeout) as answer:
            wanted = answer.read().decode().strip()
    except (urllib.error.URLError, OSError) as e:
        print("image_share: the head's image server at %s: %s" % (url, e), file=sys.stderr)
        return EXIT_FAIL
    if not IMAGE_ID.fullmatch(wanted):
        print("image_share: the head's image server at %s sent no image ID" % url, file=sys.stderr)
        return EXIT_FAIL
    if image_id(wanted) is not None:
        subprocess.run(["docker", "tag", wanted, image], check=True)
        how = "held"
    else:
        loader = subprocess.Popen(["docker", "load", "--quiet"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert loader.stdin is not None
        try:
            with urllib.request.urlopen(url + "/image", timeout=timeout) as answer:
                shutil.copyfileobj(answer, loader.stdin, CHUNK)
        except (urllib.error.URLError, OSError) as e:
            print("image_share: streaming %s from %s: %s" % (image, url, e), file=sys.stderr)
            return EXIT_FAIL
        finally:
            loader.stdin.close()
            code = loader.wait()
        if code != 0:
            print("image_share: docker load of %s from %s failed (exit %d)" % (image, url, code), file=sys.stderr)
            return EXIT_FAIL
        how = "loaded"
    found = image_id(image)
    if found != wanted:
        print("image_share: %s is %s on this node, %s on the head" % (image, found, wanted), file=sys.stderr)
        return EXIT_FAIL
    print("%s %s %s" % (how, image, found))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="image_share.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--address", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--image", required=True)
    ld = sub.add_parser("load")
    ld.add_argument("--url", required=True)
    ld.add_argument("--image", required=True)
    ld.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.address, args.port, args.image)
    return load(args.url.rstrip("/"), args.image, args.timeout)


if __name__ == "__main__":
    sys.exit(main())

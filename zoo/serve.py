"""``zoo serve``: a small web page for a vision-language model, on 127.0.0.1 only.

    zoo serve MODEL[.tag] [--checkpoint EXPORT] [--port 8765] [--gallery 200] [--captions 1000]

Pick a gallery image or upload one: the page shows its zero-shot CIFAR-10 labels with probabilities and the
closest Flickr8k test captions; type a caption: it shows the closest gallery images. The caption bank and the
gallery are Flickr8k's test split (under ZOO_DATA; the bundled samples when it is not there), embedded once at
start. Standard library only (``http.server``); the page is ``zoo/vl/static/index.html``, its queries a JSON API:

    GET  /api/info                      model, labels, gallery names
    GET  /gallery/<name>                a gallery image (JPEG)
    POST /api/describe   {"image": name} or the image file's bytes  -> {"labels": [...], "captions": [...]}
    POST /api/search     {"text": "..."}                             -> {"images": [...]}

The page also reads ``?image=<name>`` and ``?text=<caption>`` from its URL, so a headless browser can load a
query straight away (the test does).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

import torch

from zoo.errors import ConfigError, DataError, ZooError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATIC = Path(__file__).resolve().parent / "vl" / "static"
MAX_UPLOAD = 8 << 20


def build_index(name: str, checkpoint: Optional[str] = None, gallery: int = 200, captions: Optional[int] = 1000,
                device: str = "cpu", text_path: Optional[str] = None):
    """The VLIndex the page queries: Flickr8k test captions and images, or the bundled samples without ZOO_DATA."""
    from zoo.vl.evaluate import load_model, tokenizer_for
    from zoo.vl.service import VLIndex, decode_image, flickr_test_bank, sample_files

    model, _ = load_model(name, checkpoint, text_path)
    try:
        caps, names, images = flickr_test_bank(max(gallery, (captions or 5000) // 5))
        caps = caps[:captions] if captions else caps
        bank = list(zip(names, images))[:gallery]
        jpegs = {}
    except DataError as e:
        log.warning("Flickr8k test split not available (%s); serving the bundled samples", e)
        files = sample_files()
        caps, bank = [], []
        jpegs = {p.name: p.read_bytes() for p in files}
        bank = [(p.name, decode_image(jpegs[p.name])) for p in files]
        caps = [f"a photo of a {c}" for c in ("dog", "snowboarder on a slope", "group of children at the beach",
                                              "crowd on a city sidewalk")]
    index = VLIndex(model, tokenizer_for(text_path), caps, bank, device=device)
    index.jpegs = jpegs
    return index


def _jpeg(image: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_handler(index, name: str):
    """The request handler class bound to one index (one lock: a model answers one query at a time)."""
    from zoo.vl.service import decode_image

    lock = threading.Lock()
    by_name = dict(zip(index.gallery_names, index.gallery_images))

    class Handler(BaseHTTPRequestHandler):
        server_version = "zoo-serve"

        def log_message(self, fmt, *args):  # into logging, not stderr
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json({"error": message}, status)

        def do_GET(self):
            path = urlparse(self.path).path
            if path in ("/", "/index.html"):
                return self._send(200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
            if path == "/api/info":
                return self._json({"model": name, "labels": index.classes, "gallery": index.gallery_names,
                                   "captions": len(index.captions)})
            if path.startswith("/gallery/"):
                key = unquote(path[len("/gallery/"):])
                if key not in by_name:
                    return self._error(404, f"no gallery image {key!r}")
                data = getattr(index, "jpegs", {}).get(key) or _jpeg(by_name[key])
                return self._send(200, data, "image/jpeg")
            return self._error(404, f"no page {path}")

        def do_POST(self):
            path = urlparse(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD:
                return self._error(413, f"upload larger than {MAX_UPLOAD >> 20} MB")
            body = self.rfile.read(length)
            try:
                if path == "/api/describe":
                    if self.headers.get("Content-Type", "").startswith("application/json"):
                        key = json.loads(body or b"{}").get("image")
                        if key not in by_name:
                            return self._error(404, f"no gallery image {key!r}")
                        image = by_name[key]
                    else:
                        image = decode_image(body)
                    with lock:
                        return self._json(index.describe(image))
                if path == "/api/search":
                    text = json.loads(body or b"{}").get("text", "")
                    with lock:
                        return self._json({"images": index.search(text)})
            except json.JSONDecodeError:
                return self._error(400, "the request body is not JSON")
            except ZooError as e:
                return self._error(400, str(e))
            return self._error(404, f"no endpoint {path}")

    return Handler


def serve(index, name: str, port: int = 8765) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1 (``port`` 0 picks a free one); call ``serve_forever`` on it."""
    server = ThreadingHTTPServer((HOST, port), make_handler(index, name))
    server.daemon_threads = True
    return server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo serve", description="Web page for a vision-language model (127.0.0.1).")
    p.add_argument("model", help="a vision-language model (zoo list --kind vision-language), .tag or an export")
    p.add_argument("--checkpoint", default=None, help="an export of MODEL")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--gallery", type=int, default=200, help="Flickr8k test images to search among")
    p.add_argument("--captions", type=int, default=1000, help="Flickr8k test captions to retrieve from (0: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a port number (0-65535; 0 picks a free one).")
    index = build_index(args.model, args.checkpoint, args.gallery, args.captions or None, args.device)
    server = serve(index, args.model, args.port)
    print(f"zoo serve: http://{HOST}:{server.server_address[1]}/  ({args.model}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

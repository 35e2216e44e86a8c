"""`zoo serve` in a real headless browser: the page loads, describes an image (zero-shot labels with
probabilities, closest captions) and searches images by caption, through its JSON API on 127.0.0.1.

Debian's ``chromium`` drives it (``--dump-dom`` after the page's queries settle). The test setup installs it
when missing and the machine allows (root with apt); otherwise the test is skipped, saying so.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                       shell=True, capture_output=True, timeout=900)
        return shutil.which("chromium")
    return None


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if path is None:
        pytest.skip("no chromium and it cannot be installed here (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data_module):
    """A one-block CLIP model (untrained: the page's mechanics are under test, not its accuracy) served on a
    free port over 6 Flickr8k test images and 30 captions."""
    from zoo.hub import save_state_dict
    from zoo.recipes.contrastive import ContrastiveTask
    from zoo.serve import build_index, serve

    tmp = tmp_path_factory.mktemp("serve")
    task = ContrastiveTask("clip_vit_tiny_d6_minilm_128", model_args={"depth": 1})
    meta = {"model": "clip_vit_tiny_d6_minilm_128", "kind": "vision-language", "model_args": '{"depth": 1}'}
    export = save_state_dict(task.export_state_dict(), tmp / "export.safetensors", metadata=meta)
    index = build_index(str(export), gallery=6, captions=30)
    srv = serve(index, "clip_vit_tiny_d6_minilm_128 (test)", port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", index
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def shared_data_module():
    root = os.environ.get("ZOO_DATA")   # conftest points it at the real data beside the checkout
    if not root or not (Path(root) / "flickr8k-128-eval.zip").is_file():
        pytest.skip("the Flickr8k eval zip is not under ZOO_DATA")
    return Path(root)


def _dump_dom(browser: str, url: str, tmp_path) -> str:
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_api_answers_and_refuses_bad_input(server):
    url, index = server
    info = json.load(urllib.request.urlopen(url + "/api/info"))
    assert info["gallery"] == index.gallery_names and len(info["gallery"]) == 6 and info["captions"] == 30
    req = urllib.request.Request(url + "/api/describe", data=b"no image", headers={"Content-Type": "image/jpeg"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "not an image" in json.load(e.value)["error"]
    req = urllib.request.Request(url + "/api/search", data=b'{"text": "  "}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "empty" in json.load(e.value)["error"]


def test_page_in_headless_chromium(server, browser, tmp_path):
    url, index = server
    name = index.gallery_names[2]
    dom = _dump_dom(browser, f"{url}/?image={name}&text=a%20dog%20runs%20on%20the%20grass", tmp_path)
    assert 'data-ready="1"' in dom, dom[-3000:]
    labels = re.findall(r'<td class="name">([a-z]+)</td>.*?<td class="prob">([\d.]+)%</td>', dom, re.S)
    assert len(labels) == 5 and {n for n, _ in labels} <= set(index.classes)
    probs = [float(p) for _, p in labels]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.5
    expected = index.describe(index.gallery_images[2])
    assert [n for n, _ in labels] == [d["label"] for d in expected["labels"]]
    captions = re.findall(r'<li class="caption">(.*?) \(', dom)
    assert captions == [c["caption"] for c in expected["captions"]]
    hits = re.findall(r'<figure class="hit"><img src="/gallery/([^"]+)"', dom)
    assert hits == [h["image"] for h in index.search("a dog runs on the grass")]
    assert f'class="sel"' in dom and f'data-name="{name}"' in dom

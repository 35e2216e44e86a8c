"""Weight integrity: hashes recorded at download and checked on every load, NaN/inf refused, cache-folder
trouble and non-checkpoint files answered by zoo.errors, concurrent downloads never torn."""
import errno
import io
import logging
import multiprocessing as mp
import time
import zipfile
from pathlib import Path

import pytest
import torch

import zoo
from zoo import hub
from zoo.errors import CacheError, ChecksumError, WeightLoadError
from zoo.registry import PretrainedTag, WeightSource, get_entry

ARCH = "vit_micro_patch4_32"


def _publish(folder: Path, seed: int = 0) -> Path:
    """A small model's weights where a 'server' keeps them (a file:// URL downloads without network)."""
    torch.manual_seed(seed)
    return hub.save_state_dict(zoo.create_model(ARCH, depth=2).state_dict(), folder / "weights.safetensors")


def _tag(monkeypatch, source: WeightSource, sha256: str = "") -> str:
    tag = PretrainedTag(tag="inttest", source=source, sha256=sha256, num_classes=10, arch_overrides={"depth": 2},
                        preprocess={"input_size": (3, 32, 32)})
    monkeypatch.setitem(get_entry(ARCH).tags, "inttest", tag)
    return f"{ARCH}.inttest"


@pytest.fixture
def served(tmp_path, zoo_cache, monkeypatch):
    """(name, URL source, served file) of a tag with no published sha256; downloads allowed (file:// only)."""
    monkeypatch.delenv("ZOO_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = tmp_path / "server"
    server.mkdir()
    src = _publish(server)
    source = WeightSource(url=src.as_uri())
    return _tag(monkeypatch, source), source, src


def _damage(path: Path, value: int = 0x7F, n: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) - 4 * n  # inside the tensor data, past the header
    data[start:start + n] = bytes([value]) * n
    path.write_bytes(bytes(data))


def test_download_records_hash_and_damage_raises_checksum_error(served):
    name, source, _ = served
    zoo.create_model(name, pretrained=True)
    cached = hub.cached_path(source)
    assert hub.recorded_sha256(cached) == hub.sha256_of(cached)  # recorded as the file entered the cache
    _damage(cached)
    with pytest.raises(ChecksumError) as err:
        zoo.create_model(name, pretrained=True)
    msg = str(err.value)
    assert str(cached) in msg and "delete it" in msg and str(hub.record_path(cached)) in msg


def test_damaged_file_without_record_is_what_used_to_load_silently(served, caplog):
    """The old behaviour, kept for a hand-placed file: it loads (with a warning naming its hash) and gives
    non-finite logits. The recorded hash of the test above is what turns this into an error."""
    name, source, _ = served
    zoo.create_model(name, pretrained=True)
    cached = hub.cached_path(source)
    _damage(cached)
    hub.record_path(cached).unlink()
    with caplog.at_level(logging.WARNING, logger="zoo.hub"):
        model = zoo.create_model(name, pretrained=True).eval()
    assert hub.sha256_of(cached) in caplog.text and "by hand" in caplog.text
    with torch.no_grad():
        assert not torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_hand_placed_file_loads_with_warning_naming_its_hash(zoo_cache, tmp_path, monkeypatch, caplog):
    source = WeightSource(hf_repo="speedzoo-tests/hand-placed", hf_file="model.safetensors")
    name = _tag(monkeypatch, source)
    path = _publish(tmp_path)
    dest = hub.cached_path(source)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(path.read_bytes())
    with caplog.at_level(logging.WARNING, logger="zoo.hub"):
        zoo.create_model(name, pretrained=True)
    digest = hub.sha256_of(dest)
    assert digest in caplog.text and str(hub.record_path(dest)) in caplog.text
    hub.record_sha256(dest, digest)  # what the warning tells the user to do: later damage is caught
    _damage(dest)
    with pytest.raises(ChecksumError):
        zoo.create_model(name, pretrained=True)


def test_repeat_load_does_not_rehash(served, monkeypatch):
    name, _, _ = served
    zoo.create_model(name, pretrained=True)
    calls = []
    real = hub.sha256_of
    monkeypatch.setattr(hub, "sha256_of", lambda p, *a: calls.append(p) or real(p, *a))
    zoo.create_model(name, pretrained=True)
    assert calls == []


def test_nan_tensors_without_hash_raise(tmp_path):
    state = zoo.create_model(ARCH, depth=2).state_dict()
    state["backbone.blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    path = hub.save_state_dict(state, tmp_path / "nan.safetensors")
    with pytest.raises(WeightLoadError, match=r"NaN or inf .*backbone\.blocks\.1\.mlp\.fc1\.weight.*Delete it"):
        zoo.create_model(ARCH, depth=2, checkpoint_path=path)


def test_cache_under_a_file_names_the_folder_and_zoo_cache(served, tmp_path, monkeypatch):
    name, _, _ = served
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ZOO_CACHE", str(blocker / "cache"))
    with pytest.raises(CacheError) as err:
        zoo.create_model(name, pretrained=True)
    assert str(blocker / "cache") in str(err.value) and "ZOO_CACHE" in str(err.value)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EACCES, "permission denied")])
def test_full_or_unwritable_cache_during_download(served, monkeypatch, code, words):
    name, source, _ = served

    def fail(url, dst, progress=True):
        Path(dst).write_bytes(b"half")
        raise OSError(code, "simulated", str(dst))

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(CacheError, match=words) as err:
        zoo.create_model(name, pretrained=True)
    dest = hub.cached_path(source)
    assert str(dest.parent) in str(err.value) and "ZOO_CACHE" in str(err.value)
    assert not dest.exists() and not list(dest.parent.glob(".*.part"))  # nothing half-written left behind


def _slow_download(url, dst, progress=True):
    data = Path(url[len("file://"):]).read_bytes()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(0.3)
        f.write(data[len(data) // 2:])


def _resolve_in_child(tag: PretrainedTag) -> None:
    hub.resolve(tag)


def test_two_processes_downloading_at_once_never_tear_the_file(served, monkeypatch):
    name, source, src = served
    monkeypatch.setattr(torch.hub, "download_url_to_file", _slow_download)  # inherited by the forked children
    tag = get_entry(ARCH).tags["inttest"]
    dest = hub.cached_path(source)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_resolve_in_child, args=(tag,)) for _ in range(2)]
    for p in procs:
        p.start()
    want = src.read_bytes()
    seen = 0
    while any(p.is_alive() for p in procs):
        if dest.exists():
            assert dest.read_bytes() == want  # whoever reads the cache sees a whole file or none
            seen += 1
        time.sleep(0.01)
    assert [p.exitcode for p in procs] == [0, 0]
    assert dest.read_bytes() == want and hub.recorded_sha256(dest) == hub.sha256_of(src)
    assert not list(dest.parent.glob(".*.part"))
    zoo.create_model(name, pretrained=True)


class Foreign:
    pass


def _foreign_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "obj": Foreign()}, buf)
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    return buf.getvalue()


@pytest.mark.parametrize("filename, content, words", [
    ("photo.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 64, "a JPEG image"),
    ("notes.pth", b"these are my notes\n", "a text file"),
    ("empty.pth", b"", "an empty file"),
    ("archive.pth", _zip_bytes(), "a zip archive that is not a torch checkpoint"),
    ("foreign.pth", _foreign_bytes(), "pickles Python objects"),
])
def test_non_checkpoint_file_gets_our_message(tmp_path, filename, content, words):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(WeightLoadError) as err:
        zoo.create_model(ARCH, checkpoint_path=path)
    msg = str(err.value)
    assert words in msg and str(path) in msg and "weights_only=False" not in msg


def test_truncated_safetensors_gets_our_message(tmp_path):
    path = _publish(tmp_path)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(WeightLoadError, match="damaged or truncated safetensors") as err:
        zoo.create_model(ARCH, depth=2, checkpoint_path=path)
    assert "weights_only=False" not in str(err.value)


def test_truncated_torch_file_gets_our_message(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(zoo.create_model(ARCH, depth=2).state_dict(), path)
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(WeightLoadError) as err:
        zoo.create_model(ARCH, depth=2, checkpoint_path=path)
    assert str(path) in str(err.value) and "weights_only=False" not in str(err.value)

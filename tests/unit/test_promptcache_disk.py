"""The prompt cache's disk tier: file format, tags, damage, size bound and a full disk."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from corral.engine.llamacpp import promptdisk as pd
from corral.engine.llamacpp.promptcache import PromptCache, token_key
from tests.diskfull import fill_disk

TAG = pd.make_tag(Path("/store/blobs/sha256-" + "a" * 64), num_ctx=1024, kv_cache_type="f16")


def key(n: int, start: int = 0) -> bytes:
    return token_key(list(range(start, start + n)))


def written(root: Path, items: list[tuple[bytes, bytes]], tag: str = TAG, max_bytes: int = 1 << 30) -> pd.DiskTier:
    """A tier that wrote `items` and finished (its writer thread drained)."""
    tier = pd.DiskTier.open(root, tag, max_bytes)
    for k, data in items:
        tier.write(k, bytearray(data))
    tier.close(10)
    return tier


def test_entries_are_found_again_by_the_next_runner(tmp_path: Path) -> None:
    written(tmp_path, [(key(40), b"state-one" * 100), (key(50, 7), b"state-two" * 100)])
    again = pd.DiskTier.open(tmp_path, TAG, 1 << 30)
    assert sorted(again.keys()) == sorted([key(40), key(50, 7)])
    assert again.read(key(40)) == bytearray(b"state-one" * 100)
    assert again.status()["entries"] == 2 and again.status()["damaged"] == 0
    assert not list(tmp_path.rglob("*.tmp"))
    again.close(5)


def test_file_layout_is_header_tag_tokens_data(tmp_path: Path) -> None:
    written(tmp_path, [(key(40), b"x" * 1000)])
    (path,) = tmp_path.rglob("*.kv")
    raw = path.read_bytes()
    magic, version, tag_len, n_tokens, data_len, _ = pd.HEADER.unpack(raw[: pd.HEADER.size])
    assert (magic, version, n_tokens, data_len) == (b"CORRALKV", 1, 40, 1000)
    assert raw[pd.HEADER.size : pd.HEADER.size + tag_len] == TAG.encode()
    assert len(raw) == pd.HEADER.size + tag_len + 4 * 40 + 1000


def test_a_corrupted_entry_is_removed_and_never_returned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    written(tmp_path, [(key(40), b"y" * 1000)])
    (path,) = tmp_path.rglob("*.kv")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01
    path.write_bytes(bytes(raw))
    tier = pd.DiskTier.open(tmp_path, TAG, 1 << 30)  # the header is fine: indexed
    assert tier.keys() == [key(40)]
    with caplog.at_level(logging.WARNING):
        assert tier.read(key(40)) is None
    assert "checksum" in caplog.text and not path.exists()
    assert tier.keys() == [] and tier.status()["damaged"] == 1
    tier.close(5)


@pytest.mark.parametrize("cut", [10, 100, -1])
def test_a_truncated_entry_is_removed_at_startup(tmp_path: Path, cut: int) -> None:
    written(tmp_path, [(key(40), b"z" * 1000)])
    (path,) = tmp_path.rglob("*.kv")
    path.write_bytes(path.read_bytes()[:cut])
    tier = pd.DiskTier.open(tmp_path, TAG, 1 << 30)
    assert tier.keys() == [] and not path.exists() and tier.status()["damaged"] == 1
    tier.close(5)


def test_entries_of_other_models_and_options_are_not_used_nor_touched(tmp_path: Path) -> None:
    other_model = pd.make_tag(Path("/store/blobs/sha256-" + "b" * 64), num_ctx=1024, kv_cache_type="f16")
    other_ctx = pd.make_tag(Path("/store/blobs/sha256-" + "a" * 64), num_ctx=2048, kv_cache_type="f16")
    assert len({TAG, other_model, other_ctx}) == 3
    written(tmp_path, [(key(40), b"other")], tag=other_model)
    written(tmp_path, [(key(40), b"ctx")], tag=other_ctx)
    mine = pd.DiskTier.open(tmp_path, TAG, 1 << 30)
    assert mine.keys() == [] and mine.read(key(40)) is None
    assert len(list(tmp_path.rglob("*.kv"))) == 2  # theirs stay
    mine.close(5)


def test_a_foreign_file_in_this_tags_directory_is_removed(tmp_path: Path) -> None:
    other = pd.make_tag(Path("/x/sha256-" + "c" * 64))
    theirs = written(tmp_path, [(key(40), b"foreign")], tag=other)
    mine = written(tmp_path, [])
    (path,) = theirs.dir.glob("*.kv")
    planted = mine.dir / path.name
    planted.write_bytes(path.read_bytes())  # e.g. copied by hand, or a hash collision
    tier = pd.DiskTier.open(tmp_path, TAG, 1 << 30)
    assert tier.keys() == [] and not planted.exists() and path.exists()
    tier.close(5)


def test_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    tier = written(tmp_path, [])
    leftover = tier.dir / "abc.kv.123.tmp"
    leftover.write_bytes(b"half a write")
    pd.DiskTier.open(tmp_path, TAG, 1 << 30).close(5)
    assert not leftover.exists()


def test_the_directory_stays_under_its_bound_oldest_first(tmp_path: Path) -> None:
    size = pd.HEADER.size + len(TAG) + 4 * 40 + 1000
    tier = pd.DiskTier.open(tmp_path, TAG, 3 * size)
    for i in range(5):
        tier.write(key(40, 1000 * i), bytearray(b"w" * 1000))
        tier.close(10)  # one at a time, so modification times follow the order
        for path in tier.dir.glob("*.kv"):  # make the order unambiguous on coarse clocks
            os.utime(path, (path.stat().st_mtime - 10, path.stat().st_mtime - 10))
        tier = pd.DiskTier.open(tmp_path, TAG, 3 * size)
    assert sorted(tier.keys()) == sorted([key(40, 2000), key(40, 3000), key(40, 4000)])
    assert sum(p.stat().st_size for p in tmp_path.rglob("*.kv")) <= 3 * size
    tier.close(5)


def test_a_full_disk_turns_the_tier_off_without_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hit = fill_disk(monkeypatch, ".kv.", room=100)
    disk = pd.DiskTier.open(tmp_path, TAG, 1 << 30)
    cache = PromptCache(1 << 20, disk, min_tokens=4)
    with caplog.at_level(logging.WARNING):
        cache.put(key(40), bytearray(b"s" * 1000))
        disk.close(10)
    assert hit and disk.enabled is False and "disk is full" in caplog.text
    assert not list(tmp_path.rglob("*.kv*"))  # no partial file left
    assert cache.get(key(40)) == bytearray(b"s" * 1000)  # memory still serves it
    cache.put(key(50, 1), bytearray(b"t" * 1000))  # and later saves do not try the disk
    assert cache.best(key(51, 1), 50) == (50, key(50, 1))


def test_tags_name_the_model_digest_and_the_llama_build(tmp_path: Path) -> None:
    blob = tmp_path / ("sha256-" + "d" * 64)
    blob.write_bytes(b"gguf")
    tag = pd.make_tag(blob, num_ctx=512)
    assert '"model":"sha256:' + "d" * 64 in tag and "llama-cpp-python" in tag
    loose = tmp_path / "model.gguf"
    loose.write_bytes(b"gguf")
    first = pd.make_tag(loose, num_ctx=512)
    loose.write_bytes(b"gguf, changed")
    assert pd.make_tag(loose, num_ctx=512) != first  # a file outside the store: size and mtime


def test_a_state_read_from_disk_comes_back_into_memory(tmp_path: Path) -> None:
    written(tmp_path, [(key(40), b"d" * 1000)])
    cache = PromptCache(1 << 20, pd.DiskTier.open(tmp_path, TAG, 1 << 30), min_tokens=4)
    assert cache.ram == {} and cache.best(key(41), 40) == (40, key(40))
    assert cache.get(key(40)) == bytearray(b"d" * 1000)
    assert cache.stats.disk_hits == 1 and key(40) in cache.ram and cache.bytes == 1000
    assert cache.get(key(40)) is not None and cache.stats.disk_hits == 1  # from memory now
    cache.close(5)


def test_states_are_private_to_the_user(tmp_path: Path) -> None:
    tier = written(tmp_path / "kv", [(key(40), b"secret conversation")])
    (path,) = tier.dir.glob("*.kv")
    assert (tmp_path / "kv").stat().st_mode & 0o777 == 0o700 and tier.dir.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600

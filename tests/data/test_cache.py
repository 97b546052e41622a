"""The preprocessing cache: cheap keys, the user's cache folder, no half-written entries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK

from activecad.data import PreprocessCache, PreprocessConfig, default_cache_dir
from activecad.data import preprocess as preprocess_module

CONFIG = PreprocessConfig(lung_crop=False)


def _write_scan(folder: Path, name: str = "a") -> Path:
    array = np.full((12, 16, 16), -1000.0, dtype=np.float32)
    array[4:8, 5:9, 6:10] = 50.0
    image = SimpleITK.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mhd"
    SimpleITK.WriteImage(image, str(path))
    return path


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = preprocess_module._sha256_file

    def counting(file: Path) -> str:
        hashed.append(file)
        return real(file)

    monkeypatch.setattr(preprocess_module, "_sha256_file", counting)
    return hashed


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    reads: list[object] = []
    import activecad.io.ct as ct

    real = ct.read_scan

    def counting(path: object, *args: object, **kwargs: object) -> object:
        reads.append(path)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ct, "read_scan", counting)
    return reads


def test_second_load_neither_reads_nor_hashes_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_scan(tmp_path / "scans")
    hashed, reads = _count_hashing(monkeypatch), _count_reads(monkeypatch)
    cache = PreprocessCache(tmp_path / "cache")
    first = cache.load(path, CONFIG)
    assert len(reads) == 1
    second = PreprocessCache(tmp_path / "cache").load(path, CONFIG)
    assert len(reads) == 1  # served from the cache
    assert hashed == []  # the default key is path + size + mtime: no file content read
    assert isinstance(second.array, np.memmap)
    np.testing.assert_array_equal(first.array, second.array)


def test_a_modified_file_gets_a_new_key(tmp_path: Path) -> None:
    path = _write_scan(tmp_path / "scans")
    cache = PreprocessCache(tmp_path / "cache")
    before = cache.key(path, CONFIG, None)
    raw = path.with_suffix(".raw")
    stat = raw.stat()
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.key(path, CONFIG, None) != before
    assert cache.key(path, CONFIG, None) != cache.key(path, PreprocessConfig(), None)


def test_full_hashing_only_when_asked_and_content_addressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _write_scan(tmp_path / "one")
    b = _write_scan(tmp_path / "two")  # same content, another path
    hashed = _count_hashing(monkeypatch)
    full = PreprocessCache(tmp_path / "cache", hash="full")
    assert full.key(a, CONFIG, None) == full.key(b, CONFIG, None)
    assert len(hashed) == 4  # .mhd and .raw of each
    stat = PreprocessCache(tmp_path / "cache")
    assert stat.key(a, CONFIG, None) != stat.key(b, CONFIG, None)
    assert len(hashed) == 4


def test_a_phantom_manifest_sha_is_the_key_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = []
    for name in ("cohort1", "cohort2"):
        path = _write_scan(tmp_path / name / "ct")
        manifest = {
            "files": {
                "ct/a.mhd": "1" * 64,  # stands for the SHA-256 the phantom writes
                "ct/a.raw": "2" * 64,
            }
        }
        (tmp_path / name / "manifest.json").write_text(json.dumps(manifest))
        copies.append(path)
    hashed = _count_hashing(monkeypatch)
    cache = PreprocessCache(tmp_path / "cache")
    assert cache.key(copies[0], CONFIG, None) == cache.key(copies[1], CONFIG, None)
    assert hashed == []
    raw = copies[1].with_suffix(".raw")
    manifest_mtime = (tmp_path / "cohort2" / "manifest.json").stat().st_mtime_ns
    os.utime(raw, ns=(manifest_mtime + 10**9, manifest_mtime + 10**9))  # edited afterwards
    assert cache.key(copies[0], CONFIG, None) != cache.key(copies[1], CONFIG, None)


def test_default_folder_is_the_user_cache_or_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVECAD_CACHE", str(tmp_path / "env_cache"))
    assert default_cache_dir() == tmp_path / "env_cache"
    assert PreprocessCache().root == tmp_path / "env_cache"
    monkeypatch.delenv("ACTIVECAD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    import platformdirs

    expected = Path(platformdirs.user_cache_dir("activecad", appauthor=False)) / "preprocess"
    assert default_cache_dir() == expected
    assert "model" not in default_cache_dir().parts


def test_a_failed_write_leaves_no_entry_and_no_leftover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_scan(tmp_path / "scans")
    cache = PreprocessCache(tmp_path / "cache")
    real_replace = Path.replace

    def fail_on_geometry(self: Path, target: Path) -> Path:
        if str(target).endswith(".json"):
            raise KeyboardInterrupt  # the user stops the run between the two renames
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", fail_on_geometry)
    with pytest.raises(KeyboardInterrupt):
        cache.load(path, CONFIG)
    monkeypatch.setattr(Path, "replace", real_replace)
    info = cache.info()
    assert (info.entries, info.partial) == (0, 0)
    assert list((tmp_path / "cache").iterdir()) == []
    cache.load(path, CONFIG)
    assert cache.info().entries == 1 and cache.info().partial == 0


def test_info_and_clear(tmp_path: Path) -> None:
    cache = PreprocessCache(tmp_path / "cache")
    assert cache.info().entries == 0
    for name in ("a", "b"):
        cache.load(_write_scan(tmp_path / "scans", name), CONFIG)
    (tmp_path / "cache" / "x.123-abc.tmp.npy").write_bytes(b"torn")
    info = cache.info()
    assert (info.entries, info.partial) == (2, 1)
    assert info.bytes == sum(p.stat().st_size for p in (tmp_path / "cache").iterdir())
    before = cache.clear()
    assert before.entries == 2
    assert cache.info().entries == 0 and cache.info().bytes == 0


def test_a_lung_crop_that_holds_the_patch_is_one_entry_for_every_patch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A body with a 12 x 12 x 4 voxel lung; no crop margin, so the lung box is the crop.
    array = np.full((20, 30, 30), -1000.0, dtype=np.float32)
    array[:, 5:25, 5:25] = 40.0
    array[4:16, 8:20, 10:14] = -850.0
    image = SimpleITK.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    (tmp_path / "scans").mkdir()
    path = tmp_path / "scans" / "lung.mhd"
    SimpleITK.WriteImage(image, str(path))
    config = PreprocessConfig(crop_margin_mm=0.0)
    cache = PreprocessCache(tmp_path / "cache")
    reads = _count_reads(monkeypatch)
    plain = cache.load(path, config)
    assert plain.array.shape == (12, 12, 4)
    # A patch the crop already holds (the FP-reduction classifier asks for none, the
    # detector for its patch): the same array, served from the same entry.
    held = cache.load(path, config, min_shape_zyx=(8, 8, 4))
    np.testing.assert_array_equal(held.array, plain.array)
    assert len(reads) == 1 and cache.info().entries == 1
    # A patch wider than the crop: the crop grows about the lung, a second entry.
    grown = cache.load(path, config, min_shape_zyx=(8, 8, 8))
    assert grown.array.shape == (12, 12, 8)
    assert cache.info().entries == 2
    assert cache.load(path, config, min_shape_zyx=(8, 8, 8)).array.shape == (12, 12, 8)
    assert len(reads) == 2

"""Pool scoring: per scan detections, l_scan, every L_RoI reading and an embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK
import torch

from activecad.data import PreprocessCache
from activecad.data import preprocess as preprocess_module
from activecad.errors import InputError
from activecad.models.detector3d import (
    ROI_VARIANTS,
    UNCERTAINTY_COLUMNS,
    DetectorConfig,
    NoduleDetector,
    pool_table,
    score_pool,
)
from activecad.models.detector3d.network import valid_mean, window_size


@pytest.fixture
def one_pass(tiny_config: DetectorConfig) -> DetectorConfig:
    """The tiny detector with a window that takes these small scans in one pass (fast)."""
    return tiny_config.model_copy(update={"sw_roi_size": (64, 64, 64)})


def _write(folder: Path, uid: str, shape_zyx: tuple[int, int, int]) -> Path:
    rng = np.random.default_rng(len(uid))
    array = rng.normal(-700, 100, size=shape_zyx).astype(np.float32)
    image = SimpleITK.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uid}.mhd"
    SimpleITK.WriteImage(image, str(path))
    return path


def test_valid_mean_ignores_the_padding() -> None:
    # A P3 map (stride 8) of a 64^3 input whose first 40 x 24 x 64 voxels are the scan:
    # map voxels [0, 5) x [0, 3) x [0, 8) cover it. Padding holds 100, the scan 1 and 3.
    feature = torch.full((1, 2, 8, 8, 8), 100.0)
    feature[:, 0, :5, :3, :] = 1.0
    feature[:, 1, :5, :3, :] = 3.0
    pooled = valid_mean(feature, (40, 24, 64), 8)
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 3.0]]))
    # 41 voxels need a sixth map voxel (ceil(41 / 8) = 6).
    feature[:, :, 5, :3, :] = 7.0
    expected = (5 * 1.0 + 7.0) / 6
    assert float(valid_mean(feature, (41, 24, 64), 8)[0, 0]) == pytest.approx(expected)


def test_window_splits_evenly_and_keeps_one_pass_where_it_fits() -> None:
    # 327 x 228 x 322 voxels pad to 352 x 256 x 352. With a 320 limit and 25 % overlap, two
    # windows of size w cover 352 when 2w - 0.25w >= 352, i.e. w >= 201.1, rounded up to a
    # multiple of 32: 224 (MONAI: stride int(0.75 * 224) = 168, windows start at 0 and 128).
    assert window_size((352, 256, 352), (320, 320, 320), 0.25) == (224, 256, 224)
    assert window_size((320, 256, 96), (320, 320, 320), 0.25) == (320, 256, 96)
    # 640 with two windows would need 366 > 320; three: 640 / 2.5 = 256.
    assert window_size((640, 32, 32), (320, 320, 320), 0.25) == (256, 32, 32)


def test_score_pool_streams_scans_by_path_and_uid(
    one_pass: DetectorConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVECAD_CACHE", str(tmp_path / "user_cache"))
    torch.manual_seed(0)
    detector = NoduleDetector(one_pass).eval()
    first = _write(tmp_path / "pool" / "ct", "1.2.3", (40, 36, 33))
    _write(tmp_path / "pool" / "ct", "4.5.6", (34, 40, 45))
    scores = list(score_pool(detector, [first, "4.5.6"], folder=tmp_path / "pool"))
    assert [s.seriesuid for s in scores] == ["1.2.3", "4.5.6"]
    for s in scores:
        assert set(s.l_roi_variants) == set(ROI_VARIANTS)
        assert s.l_roi == s.l_roi_variants["loss_of_confident"]
        assert np.isfinite(s.l_scan)
        assert s.embedding.shape == (4 * one_pass.fpn_channels,)
        assert (s.detections.seriesuid == s.seriesuid).all()
    table, embeddings = pool_table(scores)
    assert list(table.columns) == [*UNCERTAINTY_COLUMNS, "path"]
    assert embeddings.shape == (2, 4 * one_pass.fpn_channels)
    # The default cache is the user's cache folder, not a model folder.
    assert PreprocessCache().info().entries == 2


def test_a_second_scoring_reads_the_cache_without_hashing(
    one_pass: DetectorConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = NoduleDetector(one_pass).eval()
    path = _write(tmp_path / "pool", "7.7", (40, 36, 33))
    cache = PreprocessCache(tmp_path / "cache")
    once = next(score_pool(detector, [path], cache=cache, progress=False))
    calls: list[object] = []
    monkeypatch.setattr(preprocess_module, "_sha256_file", lambda f: calls.append(f) or "")
    monkeypatch.setattr(preprocess_module, "preprocess_scan", lambda *a, **k: calls.append(a))
    twice = next(score_pool(detector, [path], cache=cache, progress=False))
    assert calls == []
    assert twice.l_scan == pytest.approx(once.l_scan)
    np.testing.assert_allclose(twice.embedding, once.embedding, rtol=1e-5)


def test_a_missing_series_fails_before_any_scan_is_scored(
    one_pass: DetectorConfig, tmp_path: Path
) -> None:
    detector = NoduleDetector(one_pass).eval()
    path = _write(tmp_path / "pool", "8.8", (40, 36, 33))
    cache = PreprocessCache(tmp_path / "cache")
    with pytest.raises(InputError, match=r"9\.9\.9 is not a scan file"):
        next(score_pool(detector, [path, "9.9.9"], folder=tmp_path / "pool", cache=cache))
    assert cache.info().entries == 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _score_rank(rank: int, port: int, config: DetectorConfig, folder: str, out: str) -> None:
    import os
    import pickle

    from activecad.models.detector3d import score_pool_sharded
    from activecad.training import distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    distributed.setup("cpu")
    torch.manual_seed(0)
    detector = NoduleDetector(config).eval()
    scores = score_pool_sharded(
        detector, ["a", "b", "c"], folder=folder, cache=Path(out) / f"cache{rank}"
    )
    (Path(out) / f"rank{rank}.pkl").write_bytes(pickle.dumps(scores))
    distributed.teardown()


@pytest.mark.slow
def test_two_gloo_processes_shard_the_pool_and_merge_it_in_order(
    one_pass: DetectorConfig, tmp_path: Path
) -> None:
    import pickle

    import torch.multiprocessing as mp

    for uid, shape in (("a", (40, 36, 33)), ("b", (34, 40, 45)), ("c", (36, 36, 36))):
        _write(tmp_path / "pool" / "ct", uid, shape)
    mp.spawn(
        _score_rank,
        args=(_free_port(), one_pass, str(tmp_path / "pool"), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    torch.manual_seed(0)
    alone = list(
        score_pool(NoduleDetector(one_pass).eval(), ["a", "b", "c"], folder=tmp_path / "pool",
                   cache=tmp_path / "cache_alone")
    )  # fmt: skip
    # rank 0 scored a and c, rank 1 scored b; both return the whole pool in the given order
    assert PreprocessCache(tmp_path / "cache0").info().entries == 2
    assert PreprocessCache(tmp_path / "cache1").info().entries == 1
    for rank in (0, 1):
        merged = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        assert [s.seriesuid for s in merged] == ["a", "b", "c"]
        for mine, reference in zip(merged, alone, strict=True):
            assert mine.l_scan == pytest.approx(reference.l_scan, rel=1e-5)
            np.testing.assert_allclose(mine.embedding, reference.embedding, rtol=1e-5)
            assert len(mine.detections) == len(reference.detections)

"""Patches and augmentation move boxes together with the image."""

from __future__ import annotations

import numpy as np
import pytest

from activecad.data import AugmentConfig, LabelledScan, PatchSampler, PreparedScan, augment_patch
from activecad.errors import InputError


def _blob_patch() -> tuple[np.ndarray, np.ndarray]:
    patch = np.zeros((32, 32, 32), dtype=np.float32)
    xx, yy, zz = np.mgrid[:32, :32, :32]
    centre = np.array([8.0, 20.0, 13.0])
    patch[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2 <= 9] = 1.0
    return patch, np.concatenate([centre - 3, centre + 3])[None]


def _centroid(patch: np.ndarray) -> np.ndarray:
    mask = patch > 0.5
    return np.argwhere(mask).mean(axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_augmented_boxes_stay_on_the_blob(seed: int) -> None:
    patch, boxes = _blob_patch()
    everything = AugmentConfig(flip_prob=0.5, rot90_prob=1.0, affine_prob=1.0, intensity_prob=0.0)
    out, moved = augment_patch(patch, boxes, everything, np.random.default_rng(seed))
    assert out.shape == patch.shape
    centre = (moved[0, :3] + moved[0, 3:]) / 2
    assert centre == pytest.approx(_centroid(out), abs=0.75)


def _labelled() -> LabelledScan:
    array = np.zeros((40, 50, 60), dtype=np.float32)
    prepared = PreparedScan(array, np.ones(3), np.zeros(3), np.eye(3), "s1")
    return LabelledScan(prepared, centres=np.array([[20.0, 25.0, 30.0]]), diameters=np.array([6.0]))


def test_positive_patches_contain_their_nodule() -> None:
    sampler = PatchSampler([_labelled()], (32, 32, 32), positive_fraction=1.0, seed=3)
    for _ in range(5):
        patch, boxes, ignored = sampler.sample()
        assert patch.shape == (32, 32, 32)
        assert ignored.shape == (0, 6)
        assert len(boxes) == 1
        assert np.all(boxes[0, 3:] - boxes[0, :3] <= 6.0 + 1e-9)


def test_ignored_findings_travel_apart_from_the_nodules() -> None:
    item = _labelled()
    # A 3 mm excluded finding 5 voxels from the nodule along x (array z-y-x indices).
    item.ignored_centres = np.array([[20.0, 25.0, 35.0]])
    item.ignored_diameters = np.array([3.0])
    sampler = PatchSampler(
        [item], (32, 32, 32), positive_fraction=1.0, augment=AugmentConfig(), seed=5
    )
    for _ in range(10):
        _, boxes, ignored = sampler.sample()
        assert len(boxes) == 1 and boxes[0, 3] - boxes[0, 0] == pytest.approx(6.0, abs=0.7)
        if len(ignored):
            # Augmentation moves both alike: their centres stay 5 voxels apart.
            gap = (ignored[0, :3] + ignored[0, 3:]) / 2 - (boxes[0, :3] + boxes[0, 3:]) / 2
            assert np.linalg.norm(gap) == pytest.approx(5.0, abs=0.6)
            assert ignored[0, 3] - ignored[0, 0] == pytest.approx(3.0, abs=0.4)


def test_an_excluded_finding_of_unknown_diameter_is_a_10_mm_box() -> None:
    # LUNA16's annotations_excluded.csv writes diameter -1; its evaluation script reads such
    # a finding as 10 mm. A -1 box (negative size) made MONAI's matcher raise mid-training.
    item = _labelled()
    item.ignored_centres = np.array([[20.0, 25.0, 35.0]])
    item.ignored_diameters = np.array([-1.0])
    box = item.ignored_boxes_xyz()[0]
    assert box[3:] - box[:3] == pytest.approx([10.0, 10.0, 10.0])


def test_same_seed_gives_same_patches() -> None:
    a = PatchSampler([_labelled()], (32, 32, 32), seed=7, augment=AugmentConfig()).batch(2)
    b = PatchSampler([_labelled()], (32, 32, 32), seed=7, augment=AugmentConfig()).batch(2)
    np.testing.assert_array_equal(a[0], b[0])


def test_a_scan_smaller_than_the_patch_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="smaller than the patch"):
        PatchSampler([_labelled()], (64, 64, 64))


def _with_hard_negative() -> LabelledScan:
    item = _labelled()
    # One hard negative far from the nodule (array z-y-x indices).
    item.hard_negatives = np.array([[10.0, 12.0, 56.0]])
    return item


def _holds(start_xyz: np.ndarray, size: int, point_zyx: np.ndarray) -> bool:
    offset = point_zyx[::-1] - start_xyz
    return bool(np.all((offset >= size / 4 - 1) & (offset <= 3 * size / 4 + 1)))


def test_hard_negative_patches_are_centred_on_them(monkeypatch: pytest.MonkeyPatch) -> None:
    item = _with_hard_negative()
    sampler = PatchSampler([item], (32, 32, 32), positive_fraction=0.0, hard_negative_fraction=1.0)
    starts: list[np.ndarray] = []
    monkeypatch.setattr(
        "activecad.data.patches.crop_patch",
        lambda array, start, size: (starts.append(start), np.zeros(size, np.float32))[1],
    )
    for _ in range(20):
        _, boxes, _ = sampler.sample()
        assert len(boxes) == 0  # the nodule is 26 voxels away in x, beyond the patch
    # Every patch holds the hard negative in its middle half (the positives' jitter).
    assert all(_holds(start, 32, item.hard_negatives[0]) for start in starts)


def test_hard_negative_fraction_is_the_share_of_background_patches() -> None:
    # Half the patches are positive; of the other half, 0.5 go to the hard negative: a
    # quarter of all (binomial, 2,000 draws: sd 0.01).
    item = _with_hard_negative()
    sampler = PatchSampler([item], (32, 32, 32), positive_fraction=0.5, hard_negative_fraction=0.5)
    centred_on: list[np.ndarray] = []
    start_near = sampler._start_near
    sampler._start_near = lambda centre: (centred_on.append(centre), start_near(centre))[1]  # type: ignore[method-assign]
    for _ in range(2000):
        sampler.sample()
    on_hard = sum(np.array_equal(c, item.hard_negatives[0]) for c in centred_on)
    on_nodule = sum(np.array_equal(c, item.centres[0]) for c in centred_on)
    assert on_hard / 2000 == pytest.approx(0.25, abs=0.04)
    assert on_nodule / 2000 == pytest.approx(0.5, abs=0.04)


def test_without_hard_negatives_the_draws_are_unchanged() -> None:
    # Runs trained before hard negatives existed must draw the same patches.
    plain = PatchSampler([_labelled()], (32, 32, 32), seed=11, augment=AugmentConfig())
    with_setting = PatchSampler(
        [_labelled()], (32, 32, 32), seed=11, augment=AugmentConfig(), hard_negative_fraction=0.9
    )
    np.testing.assert_array_equal(plain.batch(4)[0], with_setting.batch(4)[0])


def test_hard_negatives_come_from_world_coordinates() -> None:
    array = np.zeros((40, 50, 60), dtype=np.float32)
    # 2 mm voxels, origin at (-10, 0, 5) mm world x-y-z.
    prepared = PreparedScan(array, np.full(3, 2.0), np.array([-10.0, 0.0, 5.0]), np.eye(3), "s1")
    item = LabelledScan.from_world(
        prepared, np.zeros((0, 3)), np.zeros(0), hard_negatives_world=np.array([[0.0, 4.0, 9.0]])
    )
    # x: (0 + 10) / 2 = 5, y: 4 / 2 = 2, z: (9 - 5) / 2 = 2; stored z-y-x.
    np.testing.assert_allclose(item.hard_negatives, [[2.0, 2.0, 5.0]])

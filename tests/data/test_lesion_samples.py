"""Tests of the MELD slice samples: preprocessing, boxes after resampling, sampling, loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from activecad.data.lesion_samples import augment_sample, load_lesion_sets, prepare_volume
from activecad.data.lesion_slices import DATASETS, ORGANS, SliceSample
from activecad.errors import InputError
from activecad.io import Scan, write_png, write_scan, write_table
from activecad.phantom.lesion_sets import write_lesion_sets


def _window(hu: float) -> float:
    """MELD's single window -1024..3071 HU mapped to [0, 1]."""
    return (hu + 1024.0) / 4095.0


def _write_deeplesion(folder: Path) -> None:
    """Slices 0-2 (1 x 1 mm pixels, 2 mm apart) of -1000 HU; a 100 HU square on slice 1
    at rows 8-11, columns 16-19, its box on the key slice in pixel-centre coordinates."""
    for k in range(3):
        hu = np.full((32, 32), -1000.0)
        if k == 1:
            hu[8:12, 16:20] = 100.0
        write_png(hu + 32768, folder / "Images_png" / "000001_01_01" / f"{k:03d}.png")
    row = {
        "File_name": "000001_01_01_001.png",
        "Patient_index": 1,
        "Study_index": 1,
        "Series_ID": 1,
        "Key_slice_index": 1,
        "Measurement_coordinates": (16, 10, 19, 10, 17.5, 8, 17.5, 11),
        "Bounding_boxes": (16, 8, 19, 11),
        "Lesion_diameters_Pixel_": (3, 3),
        "Coarse_lesion_type": 4,
        "Possibly_noisy": 0,
        "Slice_range": (0, 2),
        "Spacing_mm_px_": (1.0, 1.0, 2.0),
        "Image_size": (32, 32),
        "Train_Val_Test": 1,
    }
    write_table(pd.DataFrame([row]), folder / "DL_info.csv", "lesions")


def test_deeplesion_key_slice_box_lands_on_the_lesion(tmp_path: Path) -> None:
    _write_deeplesion(tmp_path / "deeplesion")
    sets = load_lesion_sets(tmp_path, pixel_mm=2.0, slice_mm=2.0, crop_borders=False)
    assert list(sets.datasets) == ["universal"]
    (sample,) = sets.datasets["universal"].train
    assert sample.image.shape == (9, 16, 16) and sample.image.dtype == np.float32
    # Pixel-centre box 16..19 x 8..11 -> corners 16.5..19.5 x 8.5..11.5 -> halved at 2 mm.
    np.testing.assert_allclose(sample.boxes, [[8.25, 4.25, 9.75, 5.75]])
    # Output pixel j samples stored (j + 0.5) * 2 - 0.5: pixels 4-5 x 8-9 are the square.
    np.testing.assert_allclose(sample.image[4, 4:6, 8:10], _window(100.0), rtol=1e-3)
    np.testing.assert_allclose(sample.image[4, 3, 8], _window(-1000.0), rtol=1e-2)
    # 2 mm apart at 2 mm slices: positions -3..5 around the key slice, ends repeated, so
    # only the centre shows the square.
    assert all(sample.image[k, 4, 8] < 0.01 for k in range(9) if k != 4)
    np.testing.assert_allclose(sample.organs, [[0.0, 1.0, 0.0]])  # coarse type 4 = liver
    assert sample.dataset == "universal" and sample.image_id == "000001_01_01_001"
    assert sample.patient == "000001" and sample.spacing == (2.0, 2.0)
    # The only patient trains; nothing is held out for evaluation.
    assert sets.test_patients == [] and len(sets.evaluation) == 0


def _write_luna(folder: Path) -> None:
    """A scan stored flipped in x and y with a 200 HU blob around stored (z 4, y 5, x 6)."""
    hu = np.full((8, 20, 20), -800.0, np.float32)
    hu[3:6, 4:7, 5:8] = 200.0
    scan = Scan(
        hu,
        spacing=(1.0, 1.0, 2.0),
        origin=(100.0, 50.0, 0.0),
        direction=np.diag([-1.0, -1.0, 1.0]),
        seriesuid="1.2.3.4",
    )
    write_scan(scan, folder / "ct" / "1.2.3.4.mhd")
    # World of stored index (z 4, y 5, x 6): x = 100 - 6, y = 50 - 5, z = 0 + 2 * 4.
    nodule = {"seriesuid": "1.2.3.4", "coordX": 94.0, "coordY": 45.0, "coordZ": 8.0}
    write_table(
        pd.DataFrame([{**nodule, "diameter_mm": 6.0}]), folder / "annotations.csv", "annotations"
    )


def test_luna_boxes_follow_orientation_and_sphere(tmp_path: Path) -> None:
    _write_luna(tmp_path / "luna")
    sets = load_lesion_sets(tmp_path, pixel_mm=1.0, slice_mm=2.0, crop_borders=False)
    sampler = sets.datasets["lung_nodules"].train
    assert callable(sampler) and sampler.n_positive == 3
    samples = sampler(np.random.default_rng(0))
    positives = [s for s in samples if len(s.boxes)]
    negatives = [s for s in samples if not len(s.boxes)]
    # The sphere (radius 3 mm) crosses positions 3, 4, 5 (|dz| 2 or 0 mm < 3 mm); the five
    # other positions are negatives, three of them drawn to match.
    assert [s.image_id[-3:] for s in positives] == ["003", "004", "005"]
    assert len(negatives) == 3
    # Standard orientation: x index 19 - 6 = 13, y index 19 - 5 = 14; box = centre + 0.5
    # +- 3 mm on the centre slice, +- sqrt(9 - 4) mm one slice (2 mm) away.
    np.testing.assert_allclose(positives[1].boxes, [[10.5, 11.5, 16.5, 17.5]])
    half = np.sqrt(5.0)
    np.testing.assert_allclose(
        positives[0].boxes, [[13.5 - half, 14.5 - half, 13.5 + half, 14.5 + half]]
    )
    assert positives[1].image[4, 14, 13] == pytest.approx(_window(200.0), rel=1e-3)
    np.testing.assert_allclose(positives[1].organs, [[1.0, 0.0, 0.0]])
    # Another epoch draws other negatives but the same positives.
    again = sampler(np.random.default_rng(1))
    assert [s.image_id for s in again if len(s.boxes)] == [s.image_id for s in positives]


def _square_sample() -> SliceSample:
    image = np.zeros((9, 40, 40), np.float32)
    image[:, 12:20, 16:24] = 1.0
    return SliceSample(
        image=image,
        boxes=np.array([[16.0, 12.0, 24.0, 20.0]]),
        organs=np.array([[0.0, 0.0, 1.0]], np.float32),
        dataset="lymph_nodes",
        image_id="a_001",
        patient="a",
    )


def test_augment_moves_boxes_with_the_image() -> None:
    sample = _square_sample()
    same = augment_sample(sample, np.random.default_rng(0), scale_range=(1.0, 1.0), max_shift_px=0)
    np.testing.assert_array_equal(same.image, sample.image)
    np.testing.assert_allclose(same.boxes, sample.boxes)
    for seed in range(5):
        out = augment_sample(sample, np.random.default_rng(seed))
        height, width = out.image.shape[1:]
        assert 0.8 * 40 - 1 <= height <= 1.2 * 40 + 1 and height == width
        # The bright square's extent (pixels over half bright) is the moved box, to a pixel.
        rows = np.flatnonzero((out.image[4] > 0.5).any(axis=1))
        cols = np.flatnonzero((out.image[4] > 0.5).any(axis=0))
        x1, y1, x2, y2 = out.boxes[0]
        assert abs(cols[0] - x1) <= 1 and abs(cols[-1] + 1 - x2) <= 1
        assert abs(rows[0] - y1) <= 1 and abs(rows[-1] + 1 - y2) <= 1
        assert out.spacing[0] == pytest.approx(40 / height)


def test_augment_drops_boxes_shifted_out() -> None:
    sample = _square_sample()
    sample.boxes = np.array([[0.0, 0.0, 2.0, 2.0]])
    # A 2 px box at the corner leaves the image whenever the shift is 2 px or more away.
    gone = [
        len(augment_sample(sample, np.random.default_rng(s), scale_range=(1.0, 1.0)).boxes)
        for s in range(20)
    ]
    assert 0 in gone and 1 in gone


def test_augment_keeps_each_boxs_detected_flag() -> None:
    sample = _square_sample()
    sample.boxes = np.array([[0.0, 0.0, 2.0, 2.0], [16.0, 12.0, 24.0, 20.0]])
    sample.organs = np.zeros((2, 3), np.float32)
    sample.detected = np.array([False, True])
    for seed in range(20):
        moved = augment_sample(sample, np.random.default_rng(seed), scale_range=(1.0, 1.0))
        # The corner box may leave the image; the detected one stays and keeps its flag.
        assert moved.detected is not None and moved.detected.tolist()[-1] is True
        assert len(moved.detected) == len(moved.boxes)
    with pytest.raises(ValueError, match="detected must be"):
        SliceSample(**{**vars(sample), "detected": np.array([True])})


def test_bad_options_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no lesion dataset folder"):
        load_lesion_sets(tmp_path, pixel_mm=2.0, slice_mm=2.0)
    with pytest.raises(InputError, match="pixel_mm must be a positive"):
        load_lesion_sets(tmp_path, pixel_mm=0.0, slice_mm=2.0)
    with pytest.raises(InputError, match="did you mean 'random'"):
        load_lesion_sets(tmp_path, pixel_mm=2.0, slice_mm=2.0, split="randm")


def test_phantom_lesion_sets_load_end_to_end(tmp_path: Path) -> None:
    write_lesion_sets(
        tmp_path, patients_per_set={"deeplesion": 2, "luna": 1, "lits": 1, "nih_ln": 1}, seed=0
    )
    sets = load_lesion_sets(tmp_path, pixel_mm=2.0, slice_mm=2.0)
    assert list(sets.datasets) == list(DATASETS)
    epoch = sets.train_source(np.random.default_rng(0))
    for k, dataset in enumerate(DATASETS):
        mine = [s for s in epoch if s.dataset == dataset]
        assert mine, dataset
        for s in mine:
            assert s.image.shape[0] == 9 and s.image.min() >= 0.0 and s.image.max() <= 1.0
        if k:
            # Single-type sets: as many lesion-free slices as lesion slices, boxes of their
            # own organ only.
            positives = [s for s in mine if len(s.boxes)]
            assert len(positives) == len(mine) - len(positives)
            organs = np.concatenate([s.organs for s in positives])
            assert (organs.argmax(axis=1) == ORGANS.index(ORGANS[k - 1])).all()
    # The held-out patient's sub-volumes carry every lesion of the full truth.
    full = pd.read_csv(tmp_path / "deeplesion" / "DL_info_full.csv", dtype={"File_name": str})
    held = full[full["File_name"].str[:6].isin(sets.test_patients)]
    assert sets.test_patients and not set(sets.test_patients) & set(
        sets.datasets["universal"].train_patients
    )
    volumes = list(sets.evaluation)
    assert len(volumes) == len(sets.evaluation) >= 1
    assert sum(len(v.ground_truth()[0]) for v in volumes) == len(held)
    v = volumes[0]
    z, boxes = v.ground_truth()
    # Mapping a truth box back to the stored slice gives the table's key-slice box.
    series_rows = held[held["File_name"].str.startswith(v.series)]
    stored = v.to_stored_boxes(boxes[:1])[0]
    table_boxes = np.array(
        [[float(t) for t in b.split(",")] for b in series_rows["Bounding_boxes"]]
    )
    assert np.abs(table_boxes - stored).max(axis=1).min() < 1e-6
    assert abs(int(v.source_slices[z[0]]) - series_rows["Key_slice_index"].to_numpy()).min() <= 1


def test_training_slices_add_unlabelled_slices_to_the_key_slices(tmp_path: Path) -> None:
    from activecad.data.lesion_samples import deeplesion_training_slices
    from activecad.io.lesion_sets import read_deeplesion

    _write_deeplesion(tmp_path / "deeplesion")
    sets = load_lesion_sets(tmp_path, pixel_mm=2.0, slice_mm=2.0, crop_borders=False)
    (key,) = sets.datasets["universal"].train
    # 2 mm slices, one every 4 mm: stored slices 0 and 2, plus the key slice 1
    found = deeplesion_training_slices(
        read_deeplesion(tmp_path / "deeplesion"), pixel_mm=2.0, slice_mm=2.0, every_mm=4.0,
        crop_borders=False,
    )  # fmt: skip
    assert [s.image_id for s in found.samples] == [f"000001_01_01_{k:03d}" for k in (0, 1, 2)]
    (same,) = found.key_slices
    np.testing.assert_array_equal(same.image, key.image)  # the same sample as training uses
    np.testing.assert_array_equal(same.boxes, key.boxes)
    assert [len(s.boxes) for s in found.samples] == [0, 1, 0]
    assert found.stored_slice == {"000001_01_01_000": 0, "000001_01_01_001": 1,
                                  "000001_01_01_002": 2}  # fmt: skip
    # mapping a box back to stored pixels (pixel-centre) gives DL_info's box
    volume = found.volume_of["000001_01_01_001"]
    np.testing.assert_allclose(volume.boxes_to_stored(same.boxes) - 0.5, [[16, 8, 19, 11]])


def test_hu_window_maps_low_to_0_and_high_to_1() -> None:
    # Hand-worked: window (-600, 400) is 1000 HU wide; -600 -> 0, -100 -> 0.5, 400 -> 1,
    # and values outside are clipped. MELD's default window maps 0 HU to 1024 / 4095.
    hu = np.array([[[-1000.0, -600.0], [-100.0, 400.0]], [[0.0, 2000.0], [0.0, 0.0]]])
    common = {"pixel_spacing": (1.0, 1.0), "spacing_z": 1.0, "pixel_mm": 1.0}
    narrow = prepare_volume(hu, crop_borders=False, hu_window=(-600.0, 400.0), **common)
    np.testing.assert_allclose(narrow.array[0].astype(float), [[0.0, 0.0], [0.5, 1.0]], atol=1e-3)
    assert float(narrow.array[1, 0, 1]) == 1.0
    wide = prepare_volume(hu, crop_borders=False, **common)
    assert float(wide.array[1, 0, 0]) == pytest.approx(1024 / 4095, abs=1e-3)


def test_a_window_with_low_not_below_high_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="hu_window must be"):
        load_lesion_sets(tmp_path, pixel_mm=2.8, slice_mm=2.5, hu_window=(400.0, 400.0))


def test_node_slices_beyond_the_sphere_but_within_reach_are_ignored_not_negative() -> None:
    from activecad.data.lesion_samples import PreparedVolume, _spheres_on_slices

    volume = PreparedVolume(np.zeros((20, 32, 32), np.float16), 2.0, 1.0, (1.0, 1.0), (0, 0))
    scan = Scan(
        array=np.zeros((20, 32, 32), np.float32),
        spacing=np.array([1.0, 1.0, 2.0]),
        origin=np.zeros(3),
        direction=np.eye(3),
    )
    centre, radius = np.array([[16.0, 16.0, 20.0]]), np.array([3.0])  # z index 10, 2 mm slices
    positions = np.arange(20, dtype=np.float64)
    boxes, ignore = _spheres_on_slices(volume, scan, positions, centre, radius)
    # The sphere reaches 3 mm: slices 9-11 (|dz| 2, 0, 2 mm) are lesion, no slice is ignored.
    assert [j for j, b in enumerate(boxes) if len(b)] == [9, 10, 11]
    assert not any(len(i) for i in ignore)
    boxes, ignore = _spheres_on_slices(
        volume, scan, positions, centre, radius, reach_mm=np.array([8.0])
    )
    # Reaching 8 mm: slices 7, 8, 12, 13 (|dz| 6 and 4 mm) are ignored with the sphere's
    # width (centre 16.5 +- 3 px); slice 6 (8 mm) is not, so it may be drawn as a negative.
    assert [j for j, b in enumerate(boxes) if len(b)] == [9, 10, 11]
    assert [j for j, i in enumerate(ignore) if len(i)] == [7, 8, 12, 13]
    np.testing.assert_allclose(ignore[7], [[13.5, 13.5, 19.5, 19.5]])


def test_single_type_share_caps_the_single_type_sets_in_proportion() -> None:
    from activecad.data.lesion_samples import DatasetSamples, EvalVolumes, LesionSets

    def samples(dataset: str, n: int) -> list[SliceSample]:
        image, none = np.zeros((9, 8, 8), np.float32), np.zeros((0, 4))
        organs = np.zeros((0, 3), np.float32)
        return [
            SliceSample(image, none, organs, dataset, f"{dataset}_{k:03d}", "p") for k in range(n)
        ]

    sizes = {"universal": 10, "lung_nodules": 24, "lymph_nodes": 16}
    sets = LesionSets(
        {d: DatasetSamples(d, samples(d, n), [], ["p"], []) for d, n in sizes.items()},
        EvalVolumes(None, []),
        [],
        1.0,
        1.0,
    )
    assert len(sets.train_source(0)) == 50
    # Half single-type: at most 10 beside the 10 universal, 24 : 16 kept as 6 : 4.
    epoch = sets.train_source(0, single_type_share=0.5)
    counts = {d: sum(s.dataset == d for s in epoch) for d in sizes}
    assert counts == {"universal": 10, "lung_nodules": 6, "lymph_nodes": 4}
    other = sets.train_source(1, single_type_share=0.5)
    assert {s.image_id for s in other} != {s.image_id for s in epoch}  # drawn afresh
    with pytest.raises(ValueError, match="single_type_share"):
        sets.train_source(0, single_type_share=1.0)

"""Training patches for the detector: nodule-centred positives and background negatives.

Frames: nodules of a :class:`~activecad.data.preprocess.PreparedScan` are given as centres
(N, 3) z-y-x continuous indices of its array and diameters (N,) mm. Patches come out in
the network's order (X, Y, Z) with boxes (M, 6) xmin, ymin, zmin, xmax, ymax, zmax in
voxels of the patch.

Besides its nodules a scan may carry *ignored* findings (LUNA16's
``annotations_excluded.csv``: nodules under 3 mm, or marked by fewer than three readers).
They are nodule-like, so training them as background would teach the detector to
suppress exactly what it should find; the sampler hands their boxes out separately and
the detector leaves the anchors that cover them out of its loss.

A scan may also carry *hard negatives*: places a detector marked wrongly (its false
positives on its own training scans, or the candidates an expert rejected). Background
patches drawn uniformly over a scan land mostly in plain lung and see a vessel branching
next to a small nodule only by chance; centring a share of them on hard negatives shows
the detector its own mistakes as often as that share says (online hard-example mining at
the patch level, after Shrivastava et al., "Training Region-based Object Detectors with
Online Hard Example Mining", CVPR 2016).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from activecad.data.augment import AugmentConfig, augment_patch
from activecad.data.preprocess import PreparedScan
from activecad.errors import InputError
from activecad.io.tables import DEFAULT_DIAMETER_MM


@dataclass
class LabelledScan:
    """A preprocessed scan and its nodules.

    Attributes:
        scan: the preprocessed scan.
        centres: (N, 3) z-y-x continuous indices of ``scan.array``.
        diameters: (N,) mm.
        ignored_centres: (K, 3) z-y-x indices of findings that count neither as nodules
            nor as background.
        ignored_diameters: (K,) mm.
        hard_negatives: (H, 3) z-y-x indices of places that are not nodules but look like
            them to a detector; background patches may be centred there.
    """

    scan: PreparedScan
    centres: np.ndarray
    diameters: np.ndarray
    ignored_centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    ignored_diameters: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hard_negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    @classmethod
    def from_world(
        cls,
        scan: PreparedScan,
        centres_world: np.ndarray,
        diameters_mm: np.ndarray,
        *,
        ignored_world: np.ndarray | None = None,
        ignored_diameters_mm: np.ndarray | None = None,
        hard_negatives_world: np.ndarray | None = None,
    ) -> LabelledScan:
        """Build from world coordinates (N, 3) mm x-y-z and diameters (N,) mm.

        Args:
            scan: the preprocessed scan.
            centres_world: (N, 3) nodule centres, world mm x-y-z.
            diameters_mm: (N,) nodule diameters.
            ignored_world: (K, 3) centres of ignored findings, world mm x-y-z.
            ignored_diameters_mm: (K,) their diameters.
            hard_negatives_world: (H, 3) hard-negative places, world mm x-y-z.
        """

        def to_index(points: np.ndarray | None) -> np.ndarray:
            points = np.asarray(points if points is not None else [], np.float64).reshape(-1, 3)
            return scan.world_to_index(points) if len(points) else points

        def as_1d(values: np.ndarray | None) -> np.ndarray:
            return np.asarray(values if values is not None else [], dtype=np.float64).reshape(-1)

        return cls(
            scan,
            to_index(centres_world),
            as_1d(diameters_mm),
            to_index(ignored_world),
            as_1d(ignored_diameters_mm),
            to_index(hard_negatives_world),
        )

    def boxes_xyz(self) -> np.ndarray:
        """(N, 6) nodule boxes in voxels of the array transposed to x-y-z."""
        return self._boxes(self.centres, self.diameters)

    def ignored_boxes_xyz(self) -> np.ndarray:
        """(K, 6) boxes of the ignored findings, as :meth:`boxes_xyz`."""
        return self._boxes(self.ignored_centres, self.ignored_diameters)

    def _boxes(self, centres_zyx: np.ndarray, diameters: np.ndarray) -> np.ndarray:
        centres_xyz = centres_zyx.reshape(-1, 3)[:, ::-1]
        # An unknown (negative) diameter would make a box of negative size.
        diameters = np.where(diameters < 0, DEFAULT_DIAMETER_MM, diameters)
        half = diameters.reshape(-1)[:, None] / self.scan.spacing[None, :] / 2
        return np.concatenate([centres_xyz - half, centres_xyz + half], axis=1)


def crop_patch(array_zyx: np.ndarray, start_xyz: np.ndarray, size_xyz: np.ndarray) -> np.ndarray:
    """An (X, Y, Z) patch of a (Z, Y, X) array starting at ``start_xyz``, zero-padded outside."""
    out = np.zeros(tuple(int(s) for s in size_xyz), dtype=np.float32)
    shape_xyz = np.array(array_zyx.shape[::-1])
    lo = np.maximum(start_xyz, 0)
    hi = np.minimum(start_xyz + size_xyz, shape_xyz)
    if np.any(hi <= lo):
        return out
    region = np.asarray(array_zyx[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]).transpose(2, 1, 0)
    dst = lo - start_xyz
    out[dst[0] : dst[0] + region.shape[0], dst[1] : dst[1] + region.shape[1],
        dst[2] : dst[2] + region.shape[2]] = region  # fmt: skip
    return out


class PatchSampler:
    """Draws training patches from labelled scans.

    Args:
        scans: the training scans.
        patch_size: (3,) patch size x-y-z voxels.
        positive_fraction: share of patches centred (with jitter) on a nodule.
        hard_negative_fraction: share of the other patches centred (with the same jitter)
            on a hard negative, when the scans carry any; the rest are drawn uniformly.
            Without hard negatives no draw is spent on it, so the patches are those of a
            sampler without this setting.
        augment: augmentation settings, or None for none.
        seed: seed of every random choice.

    Raises:
        InputError: a scan is smaller than the patch along some axis.
    """

    def __init__(
        self,
        scans: list[LabelledScan],
        patch_size: tuple[int, int, int],
        *,
        positive_fraction: float = 0.5,
        hard_negative_fraction: float = 0.0,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ):
        if not scans:
            raise InputError("no training scans", fix="give a data folder with at least one scan")
        self.size = np.asarray(patch_size, dtype=int)
        for item in scans:
            shape_xyz = np.array(item.scan.array.shape[::-1])
            if np.any(shape_xyz < self.size):
                raise InputError(
                    f"scan {item.scan.seriesuid} is {tuple(int(n) for n in shape_xyz)} voxels "
                    f"(x, y, z) after preprocessing, smaller than the patch "
                    f"{tuple(int(n) for n in self.size)}",
                    fix="use a smaller patch_size or a finer spacing in the config",
                )
        self.scans = scans
        self.positive_fraction = positive_fraction
        self.hard_negative_fraction = hard_negative_fraction
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self._nodules = [(i, j) for i, s in enumerate(scans) for j in range(len(s.diameters))]
        self._hard = [(i, j) for i, s in enumerate(scans) for j in range(len(s.hard_negatives))]

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One patch (X, Y, Z) float32, its nodule boxes (M, 6) and ignored boxes (K, 6).

        Boxes are in patch voxels; only findings whose centre lies inside the patch are
        returned.
        """
        rng = self.rng
        if self._nodules and rng.random() < self.positive_fraction:
            index, nodule = self._nodules[int(rng.integers(len(self._nodules)))]
            item = self.scans[index]
            start = self._start_near(item.centres[nodule])
        elif self._hard and rng.random() < self.hard_negative_fraction:
            index, place = self._hard[int(rng.integers(len(self._hard)))]
            item = self.scans[index]
            start = self._start_near(item.hard_negatives[place])
        else:
            item = self.scans[int(rng.integers(len(self.scans)))]
            shape_xyz = np.array(item.scan.array.shape[::-1])
            start = rng.integers(0, shape_xyz - self.size + 1)
        patch = crop_patch(item.scan.array, start, self.size)
        nodules = item.boxes_xyz()
        # Nodules and ignored findings travel through the augmentation as one array.
        boxes = np.concatenate([nodules, item.ignored_boxes_xyz()])
        boxes -= np.concatenate([start, start])[None, :]
        if self.augment is not None:
            patch, boxes = augment_patch(patch, boxes, self.augment, rng)
        centres = (boxes[:, :3] + boxes[:, 3:]) / 2
        inside = np.all((centres >= 0) & (centres <= self.size - 1), axis=1)
        boxes[:, :3] = np.maximum(boxes[:, :3], 0)
        boxes[:, 3:] = np.minimum(boxes[:, 3:], self.size)
        is_nodule = np.arange(len(boxes)) < len(nodules)
        return patch, boxes[inside & is_nodule], boxes[inside & ~is_nodule]

    def _start_near(self, centre_zyx: np.ndarray) -> np.ndarray:
        """The x-y-z start of a patch holding ``centre_zyx`` somewhere in its middle half."""
        jitter = self.rng.uniform(-0.25, 0.25, size=3) * self.size
        return np.round(centre_zyx[::-1] + jitter - self.size / 2).astype(int)

    def batch(self, count: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """``count`` patches stacked (count, 1, X, Y, Z), their nodule and ignored boxes."""
        samples = [self.sample() for _ in range(count)]
        patches = np.stack([patch for patch, _, _ in samples])[:, None]
        return patches, [boxes for _, boxes, _ in samples], [ign for _, _, ign in samples]

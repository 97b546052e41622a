"""Training patches for the detector: nodule-centred positives and random negatives.

Frames: nodules of a :class:`~activecad.data.preprocess.PreparedScan` are given as centres
(N, 3) z-y-x continuous indices of its array and diameters (N,) mm. Patches come out in
the network's order (X, Y, Z) with boxes (M, 6) xmin, ymin, zmin, xmax, ymax, zmax in
voxels of the patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from activecad.data.augment import AugmentConfig, augment_patch
from activecad.data.preprocess import PreparedScan
from activecad.errors import InputError


@dataclass
class LabelledScan:
    """A preprocessed scan and its nodules.

    Attributes:
        scan: the preprocessed scan.
        centres: (N, 3) z-y-x continuous indices of ``scan.array``.
        diameters: (N,) mm.
    """

    scan: PreparedScan
    centres: np.ndarray
    diameters: np.ndarray

    @classmethod
    def from_world(
        cls, scan: PreparedScan, centres_world: np.ndarray, diameters_mm: np.ndarray
    ) -> LabelledScan:
        """Build from world coordinates (N, 3) mm x-y-z and diameters (N,) mm."""
        centres_world = np.asarray(centres_world, dtype=np.float64).reshape(-1, 3)
        centres = scan.world_to_index(centres_world) if len(centres_world) else centres_world
        return cls(scan, centres, np.asarray(diameters_mm, dtype=np.float64).reshape(-1))

    def boxes_xyz(self) -> np.ndarray:
        """(N, 6) boxes in voxels of the array transposed to x-y-z."""
        centres_xyz = self.centres[:, ::-1]
        half = self.diameters[:, None] / self.scan.spacing[None, :] / 2
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
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self._nodules = [(i, j) for i, s in enumerate(scans) for j in range(len(s.diameters))]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One patch (X, Y, Z) float32 and its boxes (M, 6) in patch voxels."""
        rng = self.rng
        if self._nodules and rng.random() < self.positive_fraction:
            index, nodule = self._nodules[int(rng.integers(len(self._nodules)))]
            item = self.scans[index]
            centre = item.centres[nodule][::-1]
            jitter = rng.uniform(-0.25, 0.25, size=3) * self.size
            start = np.round(centre + jitter - self.size / 2).astype(int)
        else:
            item = self.scans[int(rng.integers(len(self.scans)))]
            shape_xyz = np.array(item.scan.array.shape[::-1])
            start = rng.integers(0, shape_xyz - self.size + 1)
        patch = crop_patch(item.scan.array, start, self.size)
        boxes = item.boxes_xyz() - np.concatenate([start, start])[None, :]
        if self.augment is not None:
            patch, boxes = augment_patch(patch, boxes, self.augment, rng)
        centres = (boxes[:, :3] + boxes[:, 3:]) / 2
        inside = np.all((centres >= 0) & (centres <= self.size - 1), axis=1)
        boxes = boxes[inside]
        boxes[:, :3] = np.maximum(boxes[:, :3], 0)
        boxes[:, 3:] = np.minimum(boxes[:, 3:], self.size)
        return patch, boxes

    def batch(self, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """``count`` patches stacked (count, 1, X, Y, Z) and their boxes."""
        pairs = [self.sample() for _ in range(count)]
        return np.stack([p for p, _ in pairs])[:, None], [b for _, b in pairs]

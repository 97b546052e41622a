"""Training of Networks 1 and 2 (Kim et al.): presets, the loop and the model folder.

Training runs on the shared engine (:mod:`activecad.training`), as every model does. As in
the paper: Adam, learning rate 1e-4 multiplied by 0.1 at 25/40 and
37/40 of the steps, batch 16 (``paper``), class-balanced sampling (1:1 normal vs nodule).
The transfer chain is ``init_from``: pretrain on the noisy set, fine-tune on the clean set.

Model folder::

    bundle.json   {"model": "cxr", "network": 1|2, "activecad_version", "format"}
    config.json   the resolved :class:`CxrConfig`
    weights.pt    the network's state_dict
    history.json  loss per logged step
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import activecad
from activecad.errors import InputError
from activecad.models.cxr.data import CxrItem, read_cxr_image
from activecad.models.cxr.network import CxrNet, cxr_loss
from activecad.models.cxr.preprocess import augment, preprocess_radiograph

__all__ = [
    "MODEL_NAME",
    "CxrConfig",
    "load_cxr_bundle",
    "prepare_items",
    "preset_cxr_config",
    "save_cxr_bundle",
    "train_cxr",
]

MODEL_NAME = "cxr"
BUNDLE_FORMAT = 1


@dataclass
class CxrConfig:
    """Everything that defines a CXR model and its training.

    Attributes:
        preset: ``cpu`` or ``paper``.
        network: 1 or 2.
        size: input side after the lung crop (paper 512; cpu 256).
        growth_rate, block_config, num_init_features, bn_size, se_reduction, sub_channels:
            the network (paper: DenseNet-121 widths).
        clahe: apply CLAHE.
        batch_size, lr, steps: training; lr_drops: shares of ``steps`` where lr x 0.1.
        pixel_weight: weight of Network 2's localisation loss.
        augment: use augmentation.
        seed: random seed.
        label_column: the labels trained on.
    """

    preset: str = "cpu"
    network: int = 1
    size: int = 256
    growth_rate: int = 12
    block_config: tuple[int, ...] = (4, 8, 12, 8)
    num_init_features: int = 32
    bn_size: int = 4
    se_reduction: int = 8
    sub_channels: int = 64
    clahe: bool = True
    batch_size: int = 8
    lr: float = 1e-4
    steps: int = 400
    lr_drops: tuple[float, ...] = (25 / 40, 37 / 40)
    pixel_weight: float = 1.0
    augment: bool = True
    seed: int = 0
    label_column: str = "label"
    extra: dict[str, object] = field(default_factory=dict)

    def network_kwargs(self) -> dict[str, object]:
        return {
            "network": self.network,
            "growth_rate": self.growth_rate,
            "block_config": tuple(self.block_config),
            "num_init_features": self.num_init_features,
            "bn_size": self.bn_size,
            "se_reduction": self.se_reduction,
            "sub_channels": self.sub_channels,
        }


def preset_cxr_config(preset: str = "cpu", **overrides: object) -> CxrConfig:
    """``cpu``: 256 px input, a narrow DenseNet (growth 12, blocks 4-8-12-8), batch 8, lr 1e-3.

    ``paper``: 512 px, DenseNet-121 (growth 32, blocks 6-12-24-16, 64 initial features),
    batch 16, Adam lr 1e-4.
    """
    if preset == "cpu":
        cfg = CxrConfig(preset="cpu", lr=1e-3)
    elif preset == "paper":
        cfg = CxrConfig(
            preset="paper",
            size=512,
            growth_rate=32,
            block_config=(6, 12, 24, 16),
            num_init_features=64,
            se_reduction=16,
            sub_channels=128,
            batch_size=16,
            lr=1e-4,
            steps=20000,
        )
    else:
        raise InputError(f"unknown preset '{preset}'", fix="use --preset cpu or paper")
    known = set(CxrConfig.__dataclass_fields__)
    bad = [k for k in overrides if k not in known]
    if bad:
        raise InputError(f"unknown CXR config key '{bad[0]}'", fix=f"use one of {sorted(known)}")
    return replace(cfg, **overrides)  # type: ignore[arg-type]


def prepare_items(
    items: list[CxrItem], cfg: CxrConfig, need_masks: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Read and preprocess every item: (N, 1, S, S) images, (N,) labels, (N, 1, S, S) masks."""
    images, masks = [], []
    for it in items:
        arr = read_cxr_image(it.image)
        lungs = read_cxr_mask(it.lungs) if it.lungs is not None else None
        mask = read_cxr_mask(it.mask) if it.mask is not None else None
        if mask is None and need_masks:
            mask = np.zeros(arr.shape, dtype=np.uint8)
        img, m, _ = preprocess_radiograph(arr, cfg.size, lungs=lungs, mask=mask, clahe=cfg.clahe)
        images.append(img)
        if need_masks:
            masks.append(m)
    x = torch.from_numpy(np.stack(images))[:, None]
    y = torch.tensor([it.label for it in items], dtype=torch.float32)
    m = torch.from_numpy(np.stack(masks))[:, None].float() if need_masks else None
    return x, y, m


def read_cxr_mask(path: Path) -> np.ndarray:
    """A 0/255 (or 0/1) mask PNG as (y, x) uint8 0/1."""
    from activecad.io.radiograph import read_radiograph

    return (read_radiograph(path).array > 0).astype(np.uint8)


class _CxrLoss(nn.Module):
    """The network and Kim et al.'s loss as one module (the engine calls it per batch)."""

    def __init__(self, net: CxrNet, pixel_weight: float):
        super().__init__()
        self.net, self.pixel_weight = net, pixel_weight

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> dict:
        images, labels, masks = batch
        loss, parts = cxr_loss(self.net(images), labels, masks, self.pixel_weight)
        return {"total": loss, **{k: torch.tensor(v) for k, v in parts.items()}}


class CxrFitTask:
    """Class-balanced batches of preprocessed radiographs for :func:`activecad.training.fit`.

    Every batch is half nodule, half normal images drawn with replacement (the paper
    samples its training sets 1:1), augmented when the config asks for it.
    """

    def __init__(self, net: CxrNet, items: list[CxrItem], cfg: CxrConfig):
        self.model = net
        self.loss_module = _CxrLoss(net, cfg.pixel_weight)
        self.cfg = cfg
        self.images, self.labels, self.masks = prepare_items(
            items, cfg, need_masks=cfg.network == 2
        )
        labels = self.labels.numpy()
        self.positives, self.negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def start_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs."""

    def next_batch(self, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        half = max(self.cfg.batch_size // 2, 1)
        pick = torch.randint(len(self.positives), (half,), generator=self.generator).numpy()
        rest = self.cfg.batch_size - half
        other = torch.randint(len(self.negatives), (rest,), generator=self.generator).numpy()
        index = torch.from_numpy(np.concatenate([self.positives[pick], self.negatives[other]]))
        images, masks = self.images[index], None if self.masks is None else self.masks[index]
        if self.cfg.augment:
            images, masks = augment(images, masks, self.generator)
        masks = None if masks is None else masks.to(device)
        return images.to(device), self.labels[index].to(device), masks

    def validate(self) -> dict[str, float]:
        return {}


def train_cxr(
    items: list[CxrItem],
    cfg: CxrConfig,
    out_dir: str | Path | None = None,
    init_from: str | Path | None = None,
    log_every: int = 10,
    progress: bool = False,
    device: str | None = None,
) -> tuple[CxrNet, list[dict[str, float]]]:
    """Train Network ``cfg.network`` on ``items`` and (with ``out_dir``) write the model folder.

    Training runs on the shared engine (:func:`activecad.training.fit`): Adam (AdamW without
    weight decay), the paper's drops of the rate at ``cfg.lr_drops`` of the steps, and
    ``cfg.steps`` steps split into epochs of ``gcd(cfg.steps, log_every)`` steps, one history
    entry each (the mean losses of its steps).

    Args:
        items: training radiographs (Network 2: with masks; images without a mask count as
            nodule-free).
        cfg: configuration.
        out_dir: model folder to write (bundle, config, weights, history), or None.
        init_from: model folder whose weights start the training (the transfer chain). The
            backbone and sub-network load whatever matches by name and shape, so Network 2
            can start from a Network 1 model.
        log_every: steps between history entries (at most; see above).
        progress: print a line per history entry.
        device: torch device (default CUDA when available).

    Returns:
        The trained network (eval mode, on the CPU) and the history.

    Raises:
        InputError: no items, a single class, an unreadable ``init_from``.
    """
    from activecad.training.engine import Callback, FitPlan, FitState, fit

    labels = np.array([it.label for it in items])
    if len(items) == 0:
        raise InputError("no radiographs to train on", fix="check the data folder")
    if labels.min() == labels.max():
        raise InputError(
            f"all {len(items)} training labels are {labels[0]}",
            fix="give images of both classes (normal and nodule)",
        )
    torch.manual_seed(cfg.seed)
    net = CxrNet(**cfg.network_kwargs())  # type: ignore[arg-type]
    if init_from is not None:
        src, _ = load_cxr_bundle(init_from)
        own = net.state_dict()
        loaded = {k: v for k, v in src.state_dict().items() if k in own and own[k].shape == v.shape}
        own.update(loaded)
        net.load_state_dict(own)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = CxrFitTask(net.to(device), items, cfg)
    per_epoch = math.gcd(cfg.steps, max(1, log_every))
    plan = FitPlan(
        epochs=cfg.steps // per_epoch,
        steps_per_epoch=per_epoch,
        lr=cfg.lr,
        optimizer="adamw",
        weight_decay=0.0,
        schedule="drops",
        lr_drops=tuple(cfg.lr_drops),
        val_every=10**9,
        seed=cfg.seed,
    )
    history: list[dict[str, float]] = []
    start = time.perf_counter()

    class _History(Callback):
        def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
            entry = {"step": state.epoch * per_epoch, "loss": record["total"]}
            entry.update({k: v for k, v in record.items() if k not in ("epoch", "total")})
            entry["seconds"] = round(time.perf_counter() - start, 2)
            history.append(entry)
            if progress:
                print(json.dumps(entry), flush=True)

    fit(task, plan, device=device, callbacks=[_History()])
    net.cpu().eval()
    if out_dir is not None:
        save_cxr_bundle(out_dir, net, cfg, history)
    return net, history


def save_cxr_bundle(
    out_dir: str | Path, net: CxrNet, cfg: CxrConfig, history: list[dict[str, float]]
) -> Path:
    """Write the model folder (bundle.json, config.json, weights.pt, history.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "weights.pt")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    (out / "history.json").write_text(json.dumps(history))
    (out / "bundle.json").write_text(
        json.dumps(
            {
                "model": MODEL_NAME,
                "network": cfg.network,
                "preset": cfg.preset,
                "activecad_version": activecad.__version__,
                "format": BUNDLE_FORMAT,
            }
        )
    )
    return out


def load_cxr_bundle(model_dir: str | Path) -> tuple[CxrNet, CxrConfig]:
    """Load a CXR model folder (the network in eval mode) and its configuration.

    Raises:
        InputError: not a model folder, another kind of model, a newer format, missing or
            unreadable weights.
    """
    model_dir = Path(model_dir)
    info_path = model_dir / "bundle.json"
    if not info_path.is_file():
        raise InputError(
            "not a model folder (bundle.json is missing)",
            path=model_dir,
            fix="give the --out folder of 'activecad train cxr'",
        )
    try:
        info = json.loads(info_path.read_text())
        cfg_dict = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read the model folder ({exc})", path=model_dir, fix="train it again"
        ) from None
    if info.get("model") != MODEL_NAME:
        raise InputError(
            f"holds a {info.get('model')!r} model, not a 'cxr' one",
            path=model_dir,
            fix="give a model folder of 'activecad train cxr'",
        )
    if int(info.get("format", 0)) > BUNDLE_FORMAT:
        raise InputError(
            "the model folder is from a newer activecad", path=model_dir, fix="upgrade activecad"
        )
    cfg_dict["block_config"] = tuple(cfg_dict["block_config"])
    cfg_dict["lr_drops"] = tuple(cfg_dict["lr_drops"])
    cfg = CxrConfig(**cfg_dict)
    net = CxrNet(**cfg.network_kwargs())  # type: ignore[arg-type]
    try:
        state = torch.load(model_dir / "weights.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"cannot load weights.pt ({type(exc).__name__})", path=model_dir, fix="train again"
        ) from None
    return net.eval(), cfg

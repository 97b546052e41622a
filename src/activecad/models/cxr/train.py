"""Training of Networks 1 and 2 (Kim et al.): presets, the loop and the model folder.

The loop is written here, not on a shared engine (none was ready for a classifier when this
was written); it has the engine's shape (items, init weights, step budget, schedule) so it
can move onto one. As in the paper: Adam, learning rate 1e-4 multiplied by 0.1 at 25/40 and
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
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

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


def _lr_at(cfg: CxrConfig, step: int) -> float:
    drops = sum(step >= int(d * cfg.steps) for d in cfg.lr_drops)
    return cfg.lr * (0.1**drops)


def train_cxr(
    items: list[CxrItem],
    cfg: CxrConfig,
    out_dir: str | Path | None = None,
    init_from: str | Path | None = None,
    log_every: int = 10,
    progress: bool = False,
) -> tuple[CxrNet, list[dict[str, float]]]:
    """Train Network ``cfg.network`` on ``items`` and (with ``out_dir``) write the model folder.

    Args:
        items: training radiographs (Network 2: with masks; images without a mask count as
            nodule-free).
        cfg: configuration.
        out_dir: model folder to write (bundle, config, weights, history), or None.
        init_from: model folder whose weights start the training (the transfer chain). The
            backbone and sub-network load whatever matches by name and shape, so Network 2
            can start from a Network 1 model.
        log_every: steps between history entries.
        progress: print a line per logged step.

    Returns:
        The trained network (eval mode) and the history.

    Raises:
        InputError: no items, a single class, an unreadable ``init_from``.
    """
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
    x, y, m = prepare_items(items, cfg, need_masks=cfg.network == 2)
    gen = torch.Generator().manual_seed(cfg.seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history: list[dict[str, float]] = []
    net.train()
    t0 = time.perf_counter()
    half = max(cfg.batch_size // 2, 1)
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        # 1:1 normal vs nodule in every batch, as the paper samples its training sets.
        pi = torch.randint(len(pos), (half,), generator=gen).numpy()
        ni = torch.randint(len(neg), (cfg.batch_size - half,), generator=gen).numpy()
        idx = torch.from_numpy(np.concatenate([pos[pi], neg[ni]]))
        xb, yb = x[idx], y[idx]
        mb = m[idx] if m is not None else None
        if cfg.augment:
            xb, mb = augment(xb, mb, gen)
        out = net(xb)
        loss, parts = cxr_loss(out, yb, mb, cfg.pixel_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step == cfg.steps - 1:
            entry = {"step": step + 1, "loss": float(loss.detach()), **parts}
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            history.append(entry)
            if progress:
                print(json.dumps(entry), flush=True)
    net.eval()
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

r"""Eq. (12)'s target without a second CLIP pass per step: one embedding per training image, cached.

The paper takes the ground-truth class of a set from CLIP's embeddings of its images
multiplied by their masks: :math:`\sigma` summed over the set, argmax
(:func:`~cosegkit.losses.targets_from_embeddings`). Computed per set, as
:class:`~cosegkit.LCCo` does when given ``masks``, that is a second pass through the CLIP
image tower at every step, as much work as the images themselves.

``TrainConfig(class_targets="cached")`` (the default, ``cosegkit train --class-targets
cached``) computes each training image's masked embedding once instead, from the
*un-augmented* image and mask (:meth:`~cosegkit.data.TrainSets.unaugmented`: resized to the
training size, no crop, flip or colour change), and sums the cached embeddings' :math:`\sigma`
over each set. An image is embedded the first time a set holds it; from the second epoch on a
step makes no CLIP call for the target. ``class_targets="per-set"`` keeps the per-step
computation on the augmented images.

The generated worlds (synthetic, composite) draw new images for every set, so there is
nothing to reuse: their runs compute the target per set whatever the setting.

The cache lives in memory and in the run folder, written with every checkpoint, so
``--resume`` does not recompute it::

    <run>/class_targets/<key>/
        key.json         what the key covers
        rank<r>.pt       {"keys": (M, 2) int64 (group, image), "embeddings": (M, D) float32}

The key (:func:`cache_key`) is a SHA-256 of the CLIP (architecture, weights tag or file and a
digest of the loaded weights, input size), the training image size, where the masks come from
(ground truth, or the pseudo-mask store's key and thresholds) and the data: every group's name
and its image and mask files with their sizes and modification times. Any change gives another
key and a fresh cache. The vocabulary is not part of it: the cache holds image embeddings, and
the class is taken against the model's current text bank at every step, so a new vocabulary
applies at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cosegkit.engine._files import atomic_write
from cosegkit.errors import CosegValueError

__all__ = ["CLASS_TARGETS", "ClassTargetCache", "cache_key", "data_fingerprint"]

CLASS_TARGETS: tuple[str, ...] = ("cached", "per-set")
"""The readings of eq. (12)'s target that ``TrainConfig.class_targets`` accepts."""

CACHE_FORMAT = 1


def _file_stat(path: Any) -> list[Any]:
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return [str(path), None, None]
    return [str(path), st.st_size, st.st_mtime_ns]


def data_fingerprint(groups: Sequence[Any]) -> str:
    """SHA-256 of the groups' names, their image and mask files' paths, sizes and modification times.

    Masks held in a group's metadata (COCO's polygons) count by their content.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.data import Group
        >>> from cosegkit.engine.class_targets import data_fingerprint
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.png").write_bytes(b"one")
        >>> groups = [Group("cats", (folder / "a.png",), None)]
        >>> before = data_fingerprint(groups)
        >>> _ = (folder / "a.png").write_bytes(b"other")  # the file changes: another fingerprint
        >>> data_fingerprint(groups) != before
        True
    """
    digest = hashlib.sha256()
    for g in groups:
        entry = {
            "name": g.name,
            "images": [_file_stat(p) for p in g.images],
            "masks": None if g.masks is None else [_file_stat(p) for p in g.masks],
        }
        digest.update(json.dumps(entry).encode())
        if g.meta:
            digest.update(repr(sorted(g.meta.items(), key=lambda kv: str(kv[0]))).encode())
    return digest.hexdigest()


def cache_key(config: Any, clip: Any, groups: Sequence[Any], pseudo_masks: Any = None) -> tuple[str, dict[str, Any]]:
    """The cache key of a run's eq. (12) embeddings, and the description it hashes.

    Args:
        config: the run's :class:`~cosegkit.engine.TrainConfig`.
        clip: the model's :class:`~cosegkit.clip.FrozenClip`.
        groups: the training groups.
        pseudo_masks: the run's :class:`~cosegkit.engine.pseudo.PseudoMaskStore` when it
            trains on pseudo masks.

    Returns:
        The first 16 hex digits of the SHA-256 of the description's JSON, and the description.

    Example:
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.data import Group
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.class_targets import cache_key
        >>> from cosegkit.testing import register_tiny_clips, TINY_CLIP
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog"])
        >>> config = TrainConfig(dataset="folder", root="photos", image_size=32, clip_model=TINY_CLIP)
        >>> groups = [Group("cats", ("photos/a.png",), ("photos/a_mask.png",))]
        >>> key, description = cache_key(config, clip, groups)
        >>> len(key), sorted(description)
        (16, ['clip', 'data', 'format', 'image_size', 'masks'])
        >>> config.image_size = 64  # another training size: another key
        >>> cache_key(config, clip, groups)[0] != key
        True
    """
    if pseudo_masks is not None:
        masks: dict[str, Any] = {
            "source": config.pseudo_masks,
            "store": pseudo_masks.key,
            "low": config.pseudo_low,
            "high": config.pseudo_high,
            "rule": config.pseudo_rule,
            "margin": config.pseudo_margin,
        }
    else:
        masks = {"source": "ground truth"}
    description = {
        "format": CACHE_FORMAT,
        "clip": {
            "model": clip.source.get("model_name") or config.clip_model,  # the architecture built
            "pretrained": config.clip_pretrained,
            "weights_sha256": clip.weights_sha256(),
            "input_size": list(clip.image_size),
        },
        "image_size": int(config.image_size),
        "masks": masks,
        "data": data_fingerprint(groups),
    }
    blob = json.dumps(description, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], description


class ClassTargetCache:
    """Eq. (12)'s targets from one cached CLIP embedding per training image.

    Args:
        clip: the model's :class:`~cosegkit.clip.FrozenClip` (its device and text bank are used).
        sets: the training sets; they need ``unaugmented(group, index) -> (image, mask)``
            (:class:`~cosegkit.data.TrainSets` and its wrappers have it).
        folder: where to keep the cache across runs and resumes (``<run>/class_targets/<key>``);
            ``None`` keeps it in memory only.
        description: written to ``folder/key.json`` (what the key covers).
        rank: this process's rank; each rank writes its own file and reads every rank's.

    Attributes:
        computed: images embedded by this object so far (a cache hit adds nothing).

    Example:
        >>> import torch
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.data import Group, TrainSets
        >>> from cosegkit.engine.class_targets import ClassTargetCache
        >>> from cosegkit.testing import register_tiny_clips, TINY_CLIP
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog", "car"])
        >>> fake = lambda g, i: (torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(i)), torch.ones(1, 40, 40))
        >>> groups = [Group("cats", tuple(f"{i}.jpg" for i in range(6)), tuple(f"{i}.png" for i in range(6)))]
        >>> sets = TrainSets(groups, set_size=3, image_size=32, length=4, loader=fake)
        >>> cache = ClassTargetCache(clip, sets)
        >>> batch = [sets[0], sets[1]]
        >>> groups_, indices = torch.stack([b["group"] for b in batch]), torch.stack([b["indices"] for b in batch])
        >>> valid = torch.stack([b["valid"] for b in batch])
        >>> targets = cache.targets(groups_, indices, valid)
        >>> targets.shape, targets.dtype, cache.computed == len(set(indices.flatten().tolist()))
        (torch.Size([2]), torch.int64, True)
        >>> before = cache.computed
        >>> torch.equal(cache.targets(groups_, indices, valid), targets), cache.computed == before  # no CLIP call
        (True, True)
    """

    def __init__(
        self,
        clip: Any,
        sets: Any,
        folder: str | os.PathLike[str] | None = None,
        *,
        description: dict[str, Any] | None = None,
        rank: int = 0,
    ) -> None:
        if not hasattr(sets, "unaugmented"):
            raise CosegValueError(
                f"{type(sets).__name__} cannot give an image without its augmentation (no 'unaugmented' method); "
                f"compute eq. (12)'s target per set (class_targets='per-set', --class-targets per-set) for these sets"
            )
        self.clip, self.sets, self.rank = clip, sets, rank
        self.folder = Path(folder) if folder is not None else None
        self.description = description
        self.computed = 0
        self._rows: dict[tuple[int, int], int] = {}
        self._table = torch.zeros(0, 0)  # (capacity, D); rows [0, len(self)) are filled
        self._saved = 0
        if self.folder is not None:
            self._load()

    def __len__(self) -> int:
        return len(self._rows)

    # ------------------------------------------------------------------ lookup
    def embeddings(self, groups: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Cached masked-image embeddings ``(B, N, D)`` of the sets' images; zeros where ``valid`` is False.

        Args:
            groups: ``(B,)`` group index of each set (an item's ``group``).
            indices: ``(B, N)`` image index of each image in its group (an item's ``indices``).
            valid: ``(B, N)`` boolean.
        """
        b, n = indices.shape
        keys = [
            [(int(groups[i]), int(indices[i, j])) if bool(valid[i, j]) else None for j in range(n)] for i in range(b)
        ]
        missing = sorted({k for row in keys for k in row if k is not None and k not in self._rows})
        if missing:
            self._embed(missing)
        rows = torch.tensor([[self._rows[k] if k is not None else -1 for k in row] for row in keys])
        if not self._rows:  # a batch of padding only
            return torch.zeros(b, n, self.clip.embed_dim)
        out = self._table[rows.clamp_min(0)]
        return out.masked_fill(~(rows >= 0)[..., None], 0.0)

    def targets(self, groups: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Eq. (12)'s target of each set, ``(B,)`` long on the CLIP's device, against the current text bank."""
        from cosegkit.losses.classification import targets_from_embeddings

        text = self.clip.text_bank
        emb = self.embeddings(groups, indices, valid).to(device=text.device, dtype=text.dtype)
        return targets_from_embeddings(emb, text, valid.to(text.device))

    def _embed(self, keys: list[tuple[int, int]]) -> None:
        from cosegkit.losses.classification import masked_images

        pairs = [self.sets.unaugmented(g, i) for g, i in keys]
        images = torch.stack([p[0] for p in pairs])[None]
        masks = torch.stack([p[1][:1] for p in pairs])[None]
        device = self.clip.text_bank.device
        emb = self.clip.encode_checked(masked_images(images, masks).to(device))[0]  # (M, D)
        self._append(keys, emb.float().cpu())
        self.computed += len(keys)

    def _append(self, keys: Sequence[tuple[int, int]], emb: torch.Tensor) -> None:
        start, need = len(self._rows), len(self._rows) + len(keys)
        if need > self._table.shape[0] or self._table.shape[1] != emb.shape[1]:
            grown = torch.zeros(max(need, 2 * self._table.shape[0], 64), emb.shape[1])
            if start:
                grown[:start] = self._table[:start]
            self._table = grown
        self._table[start:need] = emb
        for offset, key in enumerate(keys):
            self._rows[key] = start + offset

    # ------------------------------------------------------------------ persistence
    def save(self) -> Path | None:
        """Write this rank's entries to ``folder/rank<r>.pt`` (atomically) if any were added since the last save."""
        if self.folder is None or len(self._rows) == self._saved:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.description is not None and not (self.folder / "key.json").is_file():
            text = json.dumps(self.description, indent=2) + "\n"
            atomic_write(self.folder / "key.json", lambda tmp: Path(tmp).write_text(text))
        state = {
            "format": CACHE_FORMAT,
            "keys": torch.tensor(list(self._rows), dtype=torch.long).reshape(-1, 2),
            "embeddings": self._table[: len(self._rows)].clone(),
        }
        path = self.folder / f"rank{self.rank}.pt"
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        self._saved = len(self._rows)
        return path

    def _load(self) -> None:
        assert self.folder is not None
        for path in sorted(self.folder.glob("rank*.pt")):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                keys, emb = state["keys"], state["embeddings"]
                if state.get("format") != CACHE_FORMAT or keys.shape[0] != emb.shape[0]:
                    continue
            except Exception:  # an unreadable file is recomputed, entry by entry, when needed
                continue
            new = [(j, (g, i)) for j, (g, i) in enumerate(keys.tolist()) if (g, i) not in self._rows]
            if new:
                self._append([k for _, k in new], emb[[j for j, _ in new]].float())
        self._saved = len(self._rows) if (self.folder / f"rank{self.rank}.pt").is_file() else 0

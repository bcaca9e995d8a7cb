"""How far the same CLIP weights land when run through GELU instead of QuickGELU.

    python benchmarks/quickgelu_gap.py                      # ViT-B-16, random QuickGELU weights
    python benchmarks/quickgelu_gap.py --weights ViT-B-16.pt # OpenAI's weights, any format cosegkit reads

OpenAI trained its CLIPs with QuickGELU; open_clip's ``"ViT-B-16"`` is the GELU architecture
and takes the same weights (:mod:`cosegkit.clip.activation`). One set of weights (open_clip's
random initialisation with ``--seed``, or ``--weights``) is loaded into both architectures
(``<model>-quickgelu`` and ``<model>``), and both encode the same ``--images`` random images
and the text bank of :data:`~cosegkit.clip.DEFAULT_VOCABULARY`. Printed: per image and per
class name, the relative L2 difference ``|GELU - QuickGELU| / |QuickGELU|`` of the
L2-normalised embeddings (mean and max), and the largest absolute difference of one entry.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip GELU architecture (default ViT-B-16)")
    parser.add_argument("--weights", default=None, help="a weights file (default: random QuickGELU weights)")
    parser.add_argument("--images", type=int, default=8, help="random images to encode (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    import open_clip
    import torch

    from cosegkit.clip import FrozenClip
    from cosegkit.clip.activation import quick_gelu_architecture
    from cosegkit.clip.frozen import weights_follow

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    twin = quick_gelu_architecture(args.model)
    if args.weights:
        quick = FrozenClip.from_name(twin, args.weights)
    else:
        with weights_follow():
            quick = FrozenClip(open_clip.create_model(twin, pretrained=None), open_clip.get_tokenizer(twin))
    with weights_follow():
        model = open_clip.create_model(args.model, pretrained=None)
    model.load_state_dict(quick.clip_state_dict())
    gelu = FrozenClip(model, open_clip.get_tokenizer(args.model))
    kinds = {type(m).__name__ for c in (quick, gelu) for m in c.model.modules() if "GELU" in type(m).__name__}
    images = torch.rand(1, args.images, 3, *quick.image_size, generator=torch.Generator().manual_seed(args.seed))

    def gap(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        rel = (a - b).norm(dim=-1) / b.norm(dim=-1)
        return {"rel_mean": rel.mean().item(), "rel_max": rel.max().item(), "abs_max": (a - b).abs().max().item()}

    result = {
        "model": args.model,
        "weights": args.weights or f"random (seed {args.seed})",
        "activations": sorted(kinds),
        "image_embeddings": gap(gelu.encode_images(images)[0], quick.encode_images(images)[0]),
        "text_bank": gap(gelu.text_bank, quick.text_bank),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

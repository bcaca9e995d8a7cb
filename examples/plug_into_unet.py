"""Make a plain segmentation-models-pytorch Unet set-aware, without the LCCo class.

The three cosegkit modules work on feature *sets* ``(B, N, C, h, w)``; an smp ``Unet`` works on
single images. ``cosegkit.SetAwareNetwork`` runs the unmodified Unet on the images of all sets
at once and inserts the modules, each sized from the Unet's own channel counts:

- ``ImageSetCorrespondence`` on the encoder's deepest feature (insertion point ``-1``),
- ``ClipInteraction`` on the output of the first decoder block (``"decoder.blocks.0"``),
- ``ClipRegularization`` on the output of the second (``"decoder.blocks.1"``).

At construction it checks with one backward pass that all three reach the masks. It trains for
a few steps on synthetic sets and prints the losses, so it runs anywhere in seconds:

    python examples/plug_into_unet.py
    python examples/plug_into_unet.py --encoder resnet34 --steps 20
"""

from __future__ import annotations

import argparse

import segmentation_models_pytorch as smp
import torch

from cosegkit import (
    ClipInteraction,
    ClipRegularization,
    FrozenClip,
    ImageSetCorrespondence,
    SetAwareNetwork,
    classification_loss,
    iou_loss,
)
from cosegkit.data.synthetic import SyntheticWorld
from cosegkit.losses.classification import masked_images, targets_from_embeddings
from cosegkit.testing import TINY_CLIP, register_tiny_clips


def set_aware_unet(unet: smp.Unet, clip: FrozenClip, heads: int = 4, top_k: int = 3) -> SetAwareNetwork:
    """An smp Unet refined by the three set-aware modules: the deepest feature, then two decoder blocks."""
    deepest = unet.encoder.out_channels[-1]
    block_channels = [block.conv2[0].out_channels for block in unet.decoder.blocks]
    modules = {
        -1: ImageSetCorrespondence(deepest, heads=heads),  # eq. (1)-(2)
        "decoder.blocks.0": ClipInteraction(block_channels[0], clip.embed_dim, top_k=top_k, heads=heads),  # eq. (3)-(5)
        "decoder.blocks.1": ClipRegularization(block_channels[1], clip.embed_dim, clip.num_prompts),  # eq. (6)-(8)
    }
    return SetAwareNetwork(unet, modules, clip=clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18", help="any smp encoder (default resnet18)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    torch.manual_seed(0)
    register_tiny_clips()
    world = SyntheticWorld(num_classes=8, image_size=args.size, seed=0)
    clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=world.class_names)  # or "ViT-B-16", "openai"
    unet = smp.Unet(args.encoder, encoder_weights=None, classes=1, decoder_channels=(64, 48, 32, 16, 16))
    model = set_aware_unet(unet, clip)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # the frozen CLIP is not a parameter
    for step in range(args.steps):
        images, masks, _ = world.sample_batch(2, 4, seed=(0, step))  # 2 sets of 4 images
        out = model(images)  # out.output: the Unet's masks, (B, N, 1, H, W)
        targets = targets_from_embeddings(clip.encode_images(masked_images(images, masks)), clip.text_bank)
        l_iou = iou_loss(out.output, masks)
        l_cls = classification_loss(out.class_probs, targets)  # the set's class (eq. 12's target)
        loss = l_iou + l_cls
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step + 1}: iou loss {l_iou.item():.4f}  classification loss {l_cls.item():.4f}")
    print("masks:", tuple(out.output.shape), "class probabilities:", tuple(out.class_probs.shape))


if __name__ == "__main__":
    main()

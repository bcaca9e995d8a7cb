"""segment_group keeps a class the zero-shot model is given."""

from __future__ import annotations

import torch

from cosegkit.zeroshot import ZeroShotCoseg
from cosegkit.zeroshot.groups import segment_group

BACKGROUND = ("grass", "sky", "road")


def test_segment_group_keeps_the_models_own_class_name(tiny_vit) -> None:
    """Guards against: ``segment_group`` ignores ``zs.class_name`` and takes the argmax of sigma.

    Every chunk then runs with the forced class (the model's own ``class_name``), the group's
    argmax differs, and the chunks are run again with the argmax class: the group gets the
    wrong class and the wrong masks.
    """
    images = list(torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    free = ZeroShotCoseg(tiny_vit, background=BACKGROUND)
    argmax = int(free(torch.stack(images)[None]).common_class[0])
    forced = next(name for i, name in enumerate(free.classnames) if i != argmax)  # a class that is not the argmax
    zs = ZeroShotCoseg(tiny_vit, background=BACKGROUND, class_name=forced)
    group = segment_group(zs, images, chunk_size=2)
    assert group.class_name == forced and group.class_index == zs.class_index(forced)
    assert group.rerun == 0  # every chunk already ran with the forced class
    expected = free(torch.stack(images)[None], class_name=forced).probs[0]
    torch.testing.assert_close(group.probs, expected, atol=1e-5, rtol=1e-5)
    assert int(group.class_scores.argmax()) == argmax  # sigma is still the group's own

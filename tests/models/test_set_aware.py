"""SetAwareNetwork: any per-image network made set-aware, and its gradient check."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cosegkit import (
    ClipInteraction,
    ClipRegularization,
    CosegValueError,
    ImageSetCorrespondence,
    SetAwareNetwork,
    classification_loss,
)
from cosegkit.models import default_modules

# every architecture this smp version has, by its own registry: a new one is tested when it appears
ARCHITECTURES = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
ENCODER = {"dpt": "tu-test_vit"}  # DPT needs a ViT encoder; timm's tiny test ViT
SIZE = {"pan": 128}  # PAN's feature pyramid attention pools the deepest map 8x: 64 px leaves it empty


def build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return smp.MODEL_ARCHITECTURES_MAPPING[arch](ENCODER.get(arch, "resnet18"), encoder_weights=None, classes=1)


def gradient_norms(model: SetAwareNetwork, size: int) -> list[float]:
    """Each inserted module's gradient norm from a plain backward of the output, in eval mode."""
    model.eval().zero_grad()
    out = model(torch.rand(1, 2, 3, size, size)).output
    (out * torch.randn_like(out)).sum().backward()
    norms = []
    for module in model.inserted:
        grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        norms.append(float(torch.stack(grads).norm()) if grads else 0.0)
    return norms


class TinyNet(nn.Module):
    """A per-image network of named stages, with a side branch its forward does not use."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.unused = nn.Conv2d(width, width, 1)
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(self.stem(x))
        self.unused(y)  # computed, never read: a module after it cannot reach the output
        return nn.functional.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear")


def tiny_set_aware(clip, **kwargs) -> SetAwareNetwork:
    d, p = clip.embed_dim, clip.num_prompts
    modules = {
        "body": ImageSetCorrespondence(16, heads=2),
        "stem": [ClipInteraction(16, d, top_k=3, heads=2), ClipRegularization(16, d, p)],
    }
    return SetAwareNetwork(TinyNet(), modules, clip=clip, mean=None, std=None, **kwargs)


# ---------------------------------------------------------------- every smp architecture
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_smp_architecture_reaches_or_refuses(arch, tiny_clip) -> None:
    size = SIZE.get(arch, 64)
    net = build(arch)
    unchecked = SetAwareNetwork(net, clip=tiny_clip, check=False)
    norms = gradient_norms(unchecked, size)
    dead = [label for label, norm in zip(unchecked.labels(), norms) if norm == 0]
    if not dead:
        model = SetAwareNetwork(build(arch), clip=tiny_clip)  # the check passes
        assert all(norm > 0 for norm in gradient_norms(model, size))
        assert model(torch.rand(2, 3, 3, size, size)).output.shape == (2, 3, 1, size, size)
        return
    with pytest.raises(CosegValueError) as err:
        SetAwareNetwork(build(arch), clip=tiny_clip)
    message = str(err.value)
    for label, norm in zip(unchecked.labels(), norms):  # names exactly the modules that get 0
        assert (label in message) == (norm == 0), (label, norm, message)
    # following the message: every module at a feature the decoder reads, the dead ones together
    report = unchecked.check_gradients(size)
    read = [f for f, norm in report.features.items() if norm > 0]
    assert read and all(f"{f} (stride {report.strides[f]}" in message for f in read)
    channels = net.encoder.out_channels
    d, p = tiny_clip.embed_dim, tiny_clip.num_prompts
    modules = {
        read[-1]: [
            ImageSetCorrespondence(channels[read[-1]], heads=8),
            ClipInteraction(channels[read[-1]], d, top_k=5, heads=8),
            ClipRegularization(channels[read[-1]], d, p),
        ]
    }
    model = SetAwareNetwork(build(arch), modules, clip=tiny_clip)
    assert all(norm > 0 for norm in gradient_norms(model, size))


def test_deeplabv3plus_refuses_the_three_default_points(tiny_clip) -> None:
    with pytest.raises(CosegValueError) as err:
        SetAwareNetwork(smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=1), clip=tiny_clip)
    message = str(err.value)
    assert "ClipInteraction at encoder feature -2" in message
    assert "ClipRegularization at encoder feature -3" in message
    assert "ImageSetCorrespondence" not in message  # feature -1 is read: that module is fine
    assert "-4 (stride 4, 64 channels) and -1 (stride 16, 512 channels)" in message
    assert "check=False" in message


def test_fpn_modules_all_get_a_gradient(tiny_clip) -> None:
    report = SetAwareNetwork(build("fpn"), clip=tiny_clip).check_gradients()
    assert len(report.modules) == 3 and all(norm > 0 for norm in report.modules.values())
    assert report.strides == {-5: 2, -4: 4, -3: 8, -2: 16, -1: 32}
    assert report.features[-5] == 0 and all(report.features[f] > 0 for f in (-4, -3, -2, -1))


# ---------------------------------------------------------------- a plain nn.Module
def test_plain_module_named_points(tiny_clip) -> None:
    model = tiny_set_aware(tiny_clip)
    out = model(torch.rand(2, 3, 3, 32, 32))
    assert out.output.shape == (2, 3, 2, 32, 32)
    assert out.class_probs.shape == (2, tiny_clip.num_prompts)
    assert isinstance(out.module_outputs["stem"], tuple) and len(out.module_outputs["stem"]) == 2
    assert torch.equal(out.class_probs, out.module_outputs["stem"][1].class_probs)
    assert isinstance(out.module_outputs["body"], torch.Tensor)
    assert all(norm > 0 for norm in gradient_norms(model, 32))


def test_module_list_at_one_point(tiny_clip) -> None:
    d, p = tiny_clip.embed_dim, tiny_clip.num_prompts
    group = nn.ModuleList([ClipInteraction(16, d, top_k=3, heads=2), ClipRegularization(16, d, p)])
    model = SetAwareNetwork(TinyNet(), {"body": group}, clip=tiny_clip)
    out = model(torch.rand(1, 2, 3, 32, 32))
    names = [type(o).__name__ for o in out.module_outputs["body"]]
    assert names == ["ClipInteractionOutput", "ClipRegularizationOutput"]
    assert model.labels() == ["ClipInteraction at the output of 'body'", "ClipRegularization at the output of 'body'"]


def test_two_modules_of_one_class_at_one_point_are_told_apart() -> None:
    model = SetAwareNetwork(build("fpn"), {-1: [ImageSetCorrespondence(512), ImageSetCorrespondence(512)]})
    labels = ["ImageSetCorrespondence at encoder feature -1", "ImageSetCorrespondence at encoder feature -1 (2)"]
    assert model.labels() == labels
    assert list(model.check_gradients().modules) == labels


def test_plain_module_unused_branch_is_refused(tiny_clip) -> None:
    with pytest.raises(CosegValueError) as err:
        SetAwareNetwork(TinyNet(), {"unused": ImageSetCorrespondence(16, heads=2)}, mean=None, std=None)
    message = str(err.value)
    assert "ImageSetCorrespondence at the output of 'unused'" in message
    assert "['stem', 'body', 'head']" in message  # what does reach the output


def test_class_probs_train_the_regularization(tiny_clip) -> None:
    model = tiny_set_aware(tiny_clip).train()
    out = model(torch.rand(2, 3, 3, 32, 32))
    classification_loss(out.class_probs, torch.tensor([0, 1])).backward()
    mlp3 = model.inserted[2].mlp3  # trained by the classification loss only
    assert sum(float(p.grad.norm()) for p in mlp3.parameters()) > 0


# ---------------------------------------------------------------- the set axis
def test_any_n_per_call(tiny_clip) -> None:
    model = SetAwareNetwork(build("unet"), clip=tiny_clip).eval()
    for n in (1, 2, 5):
        out = model(torch.rand(2, n, 3, 64, 64))
        assert out.output.shape == (2, n, 1, 64, 64)
        assert out.class_probs.shape == (2, tiny_clip.num_prompts)


def test_every_per_image_output_gets_the_set_axis(tiny_clip) -> None:
    torch.manual_seed(0)
    net = smp.FPN("resnet18", encoder_weights=None, classes=1, aux_params={"classes": 3})  # (masks, labels)
    masks, labels = SetAwareNetwork(net, clip=tiny_clip)(torch.rand(2, 3, 3, 64, 64)).output
    assert masks.shape == (2, 3, 1, 64, 64) and labels.shape == (2, 3, 3)


def test_padded_images_do_not_change_valid_outputs(tiny_clip) -> None:
    model = SetAwareNetwork(build("fpn"), clip=tiny_clip).eval()
    images = torch.rand(2, 4, 3, 64, 64)
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    with torch.no_grad():
        padded = model(images, valid)
        alone = model(images[1:, :2])  # set 1's valid images as a set of its own
        other = images.clone()
        other[1, 2:] = torch.rand(2, 3, 64, 64)
        repadded = model(other, valid)
    torch.testing.assert_close(padded.output[1, :2], alone.output[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded.class_probs[1], alone.class_probs[0], atol=1e-5, rtol=1e-4)
    assert torch.equal(padded.output[1, 2:], torch.zeros_like(padded.output[1, 2:]))  # padding does not run
    torch.testing.assert_close(padded.output[:, :2], repadded.output[:, :2])


def test_padded_images_stay_out_of_batchnorm_in_training(tiny_clip) -> None:
    model = tiny_set_aware(tiny_clip).train()
    images = torch.rand(2, 3, 3, 32, 32)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    images[1, 2], other = 0.0, images.clone()
    other[1, 2] = 1.0  # a black and a white pad: BatchNorm's batch mean would move by about 1/12
    a, b = model(images, valid), model(other, valid)
    torch.testing.assert_close(a.output[valid], b.output[valid], atol=1e-6, rtol=1e-6)  # valid images' statistics


@pytest.fixture(scope="module")
def tiny_eval_model(tiny_clip) -> SetAwareNetwork:
    return tiny_set_aware(tiny_clip).eval()


@settings(max_examples=8)
@given(n=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_permuting_a_set_permutes_the_outputs(tiny_eval_model, n, seed) -> None:
    model = tiny_eval_model
    torch.manual_seed(seed)
    images = torch.rand(2, n, 3, 32, 32)
    order = torch.randperm(n)
    with torch.no_grad():
        a, b = model(images), model(images[:, order])
    torch.testing.assert_close(a.output[:, order], b.output, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.class_probs, b.class_probs, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the check changes nothing
def test_check_leaves_the_network_as_it_was(tiny_clip) -> None:
    net = build("fpn").train()
    running = [b.clone() for b in net.buffers()]
    model = SetAwareNetwork(net, clip=tiny_clip)  # runs the check
    rng = torch.get_rng_state()
    model.check_gradients()
    assert torch.equal(torch.get_rng_state(), rng)  # its draws come from a generator of its own
    assert all(torch.equal(a, b) for a, b in zip(running, net.buffers()))  # BatchNorm statistics untouched
    assert all(m.training for m in model.net.modules())
    assert all(p.grad is None for p in model.parameters())


def test_clip_runs_once_per_call(tiny_clip, monkeypatch) -> None:
    model = tiny_set_aware(tiny_clip)
    calls = []
    encode = tiny_clip.encode_checked
    monkeypatch.setattr(tiny_clip, "encode_checked", lambda images, **kw: calls.append(1) or encode(images, **kw))
    model(torch.rand(1, 3, 3, 32, 32))
    assert len(calls) == 1


# ---------------------------------------------------------------- errors
def test_clip_module_without_clip(tiny_clip) -> None:
    with pytest.raises(CosegValueError, match="ClipInteraction at encoder feature -2 reads the set's CLIP"):
        SetAwareNetwork(build("fpn"), {-2: ClipInteraction(256, tiny_clip.embed_dim, top_k=3)})


def test_wrong_channels_name_the_feature(tiny_clip) -> None:
    with pytest.raises(CosegValueError, match=r"built for 128 channels, but encoder feature -1 has 512"):
        SetAwareNetwork(build("fpn"), {-1: ImageSetCorrespondence(128)})


@pytest.mark.parametrize(
    ("point", "match"),
    [
        (0, "is the input image itself"),
        (6, "does not exist: the encoder has 6 features"),
        ("decoder.nope", "has no submodule 'decoder.nope'"),
    ],
)
def test_bad_points(point, match) -> None:
    with pytest.raises(CosegValueError, match=match):
        SetAwareNetwork(build("fpn"), {point: ImageSetCorrespondence(64, heads=2)})


def test_int_point_on_a_plain_module() -> None:
    with pytest.raises(CosegValueError, match="name a submodule instead"):
        SetAwareNetwork(TinyNet(), {-1: ImageSetCorrespondence(16, heads=2)})


def test_default_modules_need_an_smp_model(tiny_clip) -> None:
    with pytest.raises(CosegValueError, match="has no encoder.out_channels|has none"):
        default_modules(TinyNet(), tiny_clip)
    with pytest.raises(CosegValueError, match="need a CLIP"):
        SetAwareNetwork(build("fpn"))


def test_check_finds_the_gradient_of_an_output_that_sums_to_a_constant() -> None:
    """A softmax over classes sums to 1 at every pixel: a plain sum of it has gradient 0, up to rounding.

    The check's randomly weighted reduction still sees the real gradient; a plain sum would
    report rounding noise (about 1e-6) as "reached".
    """
    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, classes=2, activation="softmax2d")
    model = SetAwareNetwork(net, {-1: ImageSetCorrespondence(512, heads=4)})  # the check runs at construction
    report = model.check_gradients(64)
    assert report.modules["ImageSetCorrespondence at encoder feature -1"] > 1e-2
    assert set(report.features) == {-5, -4, -3, -2, -1}  # Unet's decoder reads every feature
    assert all(norm > 1e-2 for norm in report.features.values()), report.features


def test_class_probs_come_from_the_last_regularization_to_run(tiny_clip) -> None:
    d, p = tiny_clip.embed_dim, tiny_clip.num_prompts
    torch.manual_seed(1)
    first = ClipRegularization(16, d, p)
    torch.manual_seed(2)
    last = ClipRegularization(16, d, p)
    modules = {"body": last, "stem": first}  # stem runs before body, whatever the mapping's order
    model = SetAwareNetwork(TinyNet(), modules, clip=tiny_clip, mean=None, std=None).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 3, 32, 32))
    ran_first, ran_last = out.module_outputs["stem"].class_probs, out.module_outputs["body"].class_probs
    assert not torch.allclose(ran_first, ran_last)
    assert torch.equal(out.class_probs, ran_last)

"""Architecture registry, adaptation, inference, layer tree and blocks (kt_core.models)."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
from torch import nn

from kt_core.adapt import adapt_input_conv
from kt_core.checkpoints import read_checkpoint
from kt_core.errors import CheckpointError, KTError
from kt_core.datasets.transforms import IMAGENET_NORMALIZATION
from kt_core.models import (ARCHITECTURES, _TORCHVISION_LAYOUT, adapt_first_conv, blocks,
                            build_model, build_shapeless, get_spec, infer_architectures, layer_tree, replace_head,
                            torchvision_weights_path)

ONE_PER_FAMILY = sorted({spec.family: spec.name for spec in (e.obj for e in ARCHITECTURES)}.values())


def test_registry_covers_torchvision_families_and_our_models():
    families = {e.obj.family for e in ARCHITECTURES}
    assert set(_TORCHVISION_LAYOUT) <= families
    for name in ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
                 "efficientnet_b0", "efficientnet_b3", "regnet_y_400mf", "vgg16_bn", "densenet121", "convnext_tiny",
                 "shufflenet_v2_x1_0", "squeezenet1_1", "vit_b_16", "swin_t",
                 "small_cnn", "mnist_net", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56"):
        assert name in ARCHITECTURES
    resnet18 = get_spec("resnet18")
    assert resnet18.weights == ("IMAGENET1K_V1",) and resnet18.input_size == (3, 224, 224)
    assert resnet18.normalization == IMAGENET_NORMALIZATION and resnet18.num_classes == 1000
    assert get_spec("mnist_net").normalization == ((0.1307,), (0.3081,))
    assert get_spec("cifar_resnet20").input_size == (3, 32, 32)
    with pytest.raises(KTError, match="did you mean resnet18"):
        get_spec("resnet19")


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_spec_layout_names_the_real_first_conv_and_head(name):
    """The family table is hand-written: check it against the built module tree."""
    spec = get_spec(name)
    model = build_shapeless(name)
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if spec.first_conv is None:  # an architecture without convolutions (the MLP) says so
        assert not convs
    else:
        assert spec.first_conv == convs[0]
        assert modules[spec.first_conv].in_channels == spec.input_size[0]
    head = modules[spec.head]
    assert (getattr(head, "out_features", None) or head.out_channels) == spec.num_classes
    if spec.stages:
        assert len(list(modules[spec.stages].children())) >= 3


def test_small_cnn_is_the_seed_design_with_the_right_shapes():
    model = build_model("small_cnn", in_channels=1)
    rows = {r["name"]: r for r in layer_tree(model, (1, 28, 28), get_spec("small_cnn"))}
    assert rows["conv1"]["output_shape"] == [1, 64, 28, 28]
    assert rows["pool1"]["output_shape"] == [1, 64, 14, 14]
    assert rows["conv2"]["output_shape"] == [1, 128, 14, 14]
    assert rows["pool2"]["output_shape"] == [1, 128, 7, 7]
    assert rows["fc1"]["output_shape"] == [1, 1000]
    assert rows["fc2"]["output_shape"] == [1, 10]
    assert rows["fc1"]["num_parameters"] == 128 * 7 * 7 * 1000 + 1000
    assert rows["conv1"]["num_parameters"] == 1 * 64 * 9 + 64
    assert rows["relu1"]["trainable"] is None and rows["conv1"]["trainable"] is True
    assert [rows[n]["block"] for n in ("conv1", "pool1", "conv2", "fc1", "fc2")] == ["conv1", "conv1", "conv2", "fc1", "head"]
    json.dumps(list(rows.values()))  # JSON-ready for the UI and the CLI


def test_mlp_has_no_first_conv_and_refuses_another_channel_count_by_name():
    spec = get_spec("mlp")
    assert spec.first_conv is None and spec.input_size == (1, 28, 28)
    model = build_model("mlp", num_classes=5)
    rows = {r["name"]: r for r in layer_tree(model, spec.input_size, spec)}
    assert rows["fc1"]["num_parameters"] == 784 * 128 + 128 and rows["fc2"]["output_shape"] == [1, 5]
    assert [b.name for b in blocks(model, spec)] == ["fc1", "head"]
    assert infer_architectures(model.state_dict()) == ["mlp"]  # found by its head alone
    assert build_model("mlp", in_channels=3).fc1.in_features == 3 * 28 * 28  # from scratch: any channels
    assert adapt_first_conv(model, spec, 1) is False
    with pytest.raises(KTError, match="no first convolution") as err:
        adapt_first_conv(model, spec, 3)
    assert "1-channel data" in err.value.hint


def test_layer_tree_survives_a_wrong_input_size():
    model = build_model("small_cnn", in_channels=1)
    rows = {r["name"]: r for r in layer_tree(model, (1, 32, 32))}
    assert rows["conv1"]["output_shape"] == [1, 64, 32, 32]  # ran until the flattened size was wrong
    assert rows["fc1"]["output_shape"] is None
    assert model.training  # the mode is restored after the dry run


def test_mnist_net_keys_match_the_real_checkpoint(real_data):
    raw = read_checkpoint(real_data / "checkpoints" / "mnist_cnn.pt")
    ours = {k: tuple(v.shape) for k, v in build_model("mnist_net").state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in raw.state_dict.items()}


@pytest.mark.parametrize("name, params", [("cifar_resnet20", 269_722), ("cifar_resnet56", 853_018)])
def test_cifar_resnet_parameter_counts(name, params):
    # the data README: 0.27 M and 0.85 M, as in He et al.'s table
    assert sum(p.numel() for p in build_model(name).parameters()) == params


def test_cifar_resnet_shortcut_pads_channels_and_subsamples():
    model = build_model("cifar_resnet20").eval()
    rows = {r["name"]: r["output_shape"] for r in layer_tree(model, (3, 32, 32))}
    assert rows["layer2.0.shortcut"] == [1, 32, 16, 16] and rows["layer3.0.shortcut"] == [1, 64, 8, 8]
    assert rows["linear"] == [1, 10]
    assert not any(k.startswith(("layer2.0.shortcut", "layer3.0.shortcut")) for k in model.state_dict())


def test_replace_head_linear_and_squeezenet_conv():
    model = build_model("cifar_resnet20")
    assert replace_head(model, get_spec("cifar_resnet20"), 3) is True
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert replace_head(model, get_spec("cifar_resnet20"), 3) is False
    squeeze = build_model("squeezenet1_1", num_classes=4)
    assert isinstance(squeeze.classifier[1], nn.Conv2d) and squeeze.classifier[1].out_channels == 4
    assert squeeze.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_adapt_input_conv_keeps_the_response_to_grey_images():
    conv = nn.Conv2d(3, 8, 3)
    grey = torch.rand(2, 1, 10, 10)
    expected = conv(grey.expand(-1, 3, -1, -1))
    to_one = nn.Conv2d(1, 8, 3)
    to_one.weight.data = adapt_input_conv(conv.weight.data, 1)
    to_one.bias.data = conv.bias.data
    assert torch.allclose(to_one(grey), expected, atol=1e-5)

    mono = nn.Conv2d(1, 8, 3)
    to_three = nn.Conv2d(3, 8, 3)
    to_three.weight.data = adapt_input_conv(mono.weight.data, 3)
    to_three.bias.data = mono.bias.data
    assert torch.allclose(to_three(grey.expand(-1, 3, -1, -1)), mono(grey), atol=1e-5)
    assert adapt_input_conv(conv.weight, 4).shape == (8, 4, 3, 3)
    assert adapt_input_conv(conv.weight, 3) is conv.weight


def test_build_model_for_another_task():
    model = build_model("resnet18", num_classes=7, in_channels=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert model.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 7)


def test_infer_architectures_ignores_head_classes_and_input_channels(real_data):
    sd = build_model("resnet18", num_classes=5, in_channels=1).state_dict()
    assert infer_architectures(sd) == ["resnet18"]
    assert infer_architectures(build_model("cifar_resnet32").state_dict()) == ["cifar_resnet32"]
    assert infer_architectures(build_model("mobilenet_v3_small", num_classes=3).state_dict()) == ["mobilenet_v3_small"]
    assert infer_architectures(read_checkpoint(real_data / "checkpoints" / "mnist_cnn.pt").state_dict) == ["mnist_net"]
    resnet20 = read_checkpoint(real_data / "checkpoints" / "resnet20-12fca82f.th").state_dict
    assert infer_architectures(resnet20) == ["cifar_resnet20"]  # no num_batches_tracked in that file
    assert infer_architectures({"enc.weight": torch.zeros(3, 3, 3, 3), "fc.weight": torch.zeros(2, 3)}) == []
    truncated = {k: v for k, v in sd.items() if not k.startswith("layer4")}
    assert infer_architectures(truncated) == []


@pytest.mark.parametrize("name", ["small_cnn", "cifar_resnet20", "resnet18", "mobilenet_v3_small", "vgg11",
                                  "densenet121", "squeezenet1_1", "vit_b_16", "swin_t", "regnet_y_400mf"])
def test_blocks_cover_every_parameter_once_from_input_to_head(name):
    spec = get_spec(name)
    model = build_shapeless(name)
    groups = blocks(model, spec)
    assert groups[-1].name == "head" and groups[-1].owns(f"{spec.head}.weight")
    assert groups[0].owns(f"{spec.first_conv}.weight")
    assert len(groups) >= 4
    for param_name, _ in model.named_parameters():
        owners = [g.name for g in groups if g.owns(param_name)]
        assert len(owners) == 1, (param_name, owners)


def test_resnet_blocks_are_stem_stages_head():
    groups = blocks(build_shapeless("resnet18"), get_spec("resnet18"))
    assert [g.name for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert groups[0].modules == ["conv1", "bn1", "relu", "maxpool"]


def test_blocks_of_an_unknown_model_are_its_children():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 1, 8, 8))
    assert [(g.name, g.modules) for g in blocks(model)] == [("0", ["0", "1"]), ("2", ["2", "3"]), ("head", ["4"])]


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_offline_torchvision_weights_say_where_the_file_belongs(empty_hub, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError) as err:
        build_model("resnet18", weights="IMAGENET1K_V1")
    expected = empty_hub / "resnet18-f37072fd.pth"
    assert str(expected) in err.value.message
    assert "random initialisation" in err.value.hint  # in words for UI and CLI alike (the UI offers a button)
    with pytest.raises(KTError, match="valid weights: IMAGENET1K_V1"):
        build_model("resnet18", weights="IMAGENET9K")


def test_torchvision_weights_from_the_hub_cache(empty_hub, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    spec = get_spec("squeezenet1_1")
    path, _ = torchvision_weights_path(spec, "IMAGENET1K_V1")
    assert path.parent == empty_hub
    torch.manual_seed(1)
    cached = build_model("squeezenet1_1").state_dict()
    path.parent.mkdir(parents=True)
    torch.save(cached, path)
    model = build_model("squeezenet1_1", weights="IMAGENET1K_V1", num_classes=5)
    assert torch.equal(model.features[0].weight, cached["features.0.weight"])
    assert model.classifier[1].out_channels == 5

import pytest
import torch

from model import FER_CNN, VGG_WIDTHS, FERNet, build_model, count_parameters


def seed_parameter_count(num_classes=5):
    convs = sum(c_out * (c_in * 9 + 1) + 2 * c_out for c_in, c_out in [(3, 64), (64, 128), (128, 256), (256, 512)])
    fcs = sum(o * (i + 1) for i, o in [(4608, 4096), (4096, 1024), (1024, 256), (256, num_classes)])
    return convs + fcs


def test_seed_model_is_the_assignments_network():
    model = build_model("seed", 5)
    assert isinstance(model, FER_CNN)
    assert count_parameters(model) == seed_parameter_count()
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 5)


@pytest.mark.parametrize("arch,channels", [("seed", 3), ("vgg", 1)])
def test_models_run_in_channels_last(arch, channels):
    model = build_model(arch, 7).to(memory_format=torch.channels_last).eval()
    x = torch.randn(3, channels, 48, 48)
    with torch.no_grad():
        expected = model(x)
        got = model(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == (3, 7)
    assert torch.allclose(got, expected, atol=1e-4)


def test_default_model_is_much_smaller_than_the_seed_and_takes_other_sizes():
    model = build_model("vgg", 5)
    assert isinstance(model, FERNet)
    assert count_parameters(model) < seed_parameter_count() / 10
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet9000", 5)


def test_vgg_with_the_seeds_dense_head_differs_only_in_the_classifier():
    gap, fc = build_model("vgg", 5), build_model("vgg", 5, head="fc")
    assert [type(m) for m in gap.features] == [type(m) for m in fc.features]
    dense = [(m.in_features, m.out_features) for m in fc.head if isinstance(m, torch.nn.Linear)]
    assert dense == [(VGG_WIDTHS[-1] * 3 * 3, 4096), (4096, 1024), (1024, 256), (256, 5)]
    assert fc(torch.randn(2, 1, 48, 48)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown head"):
        build_model("vgg", 5, head="mlp")


def test_per_stage_conv_counts():
    model = build_model("vgg", 5, widths=(8, 16, 32), convs_per_stage=(1, 2, 3))
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 16, 16, 32, 32, 32]
    with pytest.raises(ValueError, match="one positive count per stage"):
        build_model("vgg", 5, widths=(8, 16, 32), convs_per_stage=(1, 0, 3))

"""The two networks: the architectures of their sources, and clear errors for bad input."""

import copy

import pytest
import torch
import torch.nn as nn

from mnist_dissected.models import (
    LeNet,
    Net,
    count_parameters,
    loss_function,
    model_class,
    unwrap,
)

#: The example's Net (pytorch/examples mnist/main.py at d8dd8ca^), its parameters written out.
NET_PARAMETERS = [
    ("conv1.weight", (10, 1, 5, 5)),
    ("conv1.bias", (10,)),
    ("conv2.weight", (20, 10, 5, 5)),
    ("conv2.bias", (20,)),
    ("fc1.weight", (50, 320)),
    ("fc1.bias", (50,)),
    ("fc2.weight", (10, 50)),
    ("fc2.bias", (10,)),
]


def test_net_is_the_pytorch_example_network():
    net = Net()
    assert count_parameters(net) == 21_840
    assert [(n, tuple(p.shape)) for n, p in net.named_parameters()] == NET_PARAMETERS
    assert isinstance(net.conv2_drop, nn.Dropout2d) and net.conv2_drop.p == 0.5


def test_lenet_is_the_blitz_network():
    lenet = LeNet()
    assert count_parameters(lenet) == 61_706
    shapes = [tuple(p.shape) for p in lenet.parameters()]
    assert shapes == [
        (6, 1, 5, 5),
        (6,),
        (16, 6, 5, 5),
        (16,),
        (120, 400),
        (120,),
        (84, 120),
        (84,),
        (10, 84),
        (10,),
    ]


def test_net_outputs_log_probabilities():
    torch.manual_seed(0)
    out = Net().eval()(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(3))
    assert loss_function(Net()) is torch.nn.functional.nll_loss
    assert loss_function(LeNet()) is torch.nn.functional.cross_entropy


def test_dropout_is_on_in_training_and_off_in_eval():
    torch.manual_seed(0)
    net, x = Net(), torch.randn(4, 1, 28, 28)
    assert not torch.equal(net.train()(x), net(x))
    assert torch.equal(net.eval()(x), net(x))


def test_net_without_dropout_is_deterministic_in_training_mode():
    torch.manual_seed(0)
    net, x = Net(dropout=0.0).train(), torch.randn(2, 1, 28, 28)
    assert torch.equal(net(x), net(x))


def test_channels_last_gives_the_same_output():
    """A channels_last copy (``.to`` changes a module in place, so a copy) computes what the
    contiguous net does, up to float32 rounding (other kernels add in another order)."""
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(5, 1, 28, 28)
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    # the layouts really differ: the weights, and so every activation after conv1
    # (one input channel: a batch of images is laid out the same either way)
    assert cl.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert cl.conv2.weight.stride() != net.conv2.weight.stride()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert cl.conv1(x_cl).stride() != net.conv1(x).stride()
    torch.testing.assert_close(cl(x_cl), net(x))


def test_lenet_on_28x28_says_to_pad_by_2():
    with pytest.raises(ValueError, match=r"32 x 32.*got 28 x 28.*pad .*by 2"):
        LeNet()(torch.zeros(1, 1, 28, 28))
    assert LeNet()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    "shape, hint",
    [
        ((1, 28, 28), r"without a batch dimension.*unsqueeze\(0\)"),
        ((28, 28), r"unsqueeze\(0\)\.unsqueeze\(0\)"),
        ((8, 28, 28), r"without a channel dimension.*unsqueeze\(1\)"),
        ((2, 3, 28, 28), r"1 channel.*got 3"),
        ((2, 1, 32, 32), r"28 x 28 images, got 32 x 32"),
        ((1, 1, 1, 28, 28), r"4-D"),
    ],
)
def test_wrong_input_shapes_get_clear_errors(shape, hint):
    with pytest.raises(ValueError, match=hint):
        Net()(torch.zeros(shape))


def test_model_class_by_name():
    assert model_class("Net") is Net and model_class("lenet") is LeNet
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        model_class("resnet")


def test_unwrap_finds_the_model_inside_every_wrapper():
    net = Net()
    assert unwrap(net) is net
    assert unwrap(nn.DataParallel(net)) is net  # DistributedDataParallel's ".module" too
    assert unwrap(torch.compile(net)) is net  # lazy: nothing is compiled here
    assert unwrap(torch.compile(nn.DataParallel(net))) is net
    assert unwrap(nn.DataParallel(torch.compile(net))) is net
    assert loss_function(nn.DataParallel(LeNet())) is torch.nn.functional.cross_entropy

"""The CNNs of this toolkit, each built from scratch (no pretrained weights).

- `FER_CNN` ("assignment"): the course assignment's VGG-like network, layer for layer.
- `FERNet` ("vgg", the default): a VGG-style network designed to generalise on small FER sets:
  two 3x3 convolutions per stage, global average pooling instead of a 19M-parameter dense head.

`build_model(arch, num_classes, in_channels, **arch_args)` is the one way scripts make a model, so a
checkpoint that stores (arch, arch_args) can always rebuild what it was trained with.
"""
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# FERNet's channels per stage. 24..192 trained in 0.7x the time of 32..256 for 1.1 points less fer5 validation
# Macro-F1 (docs/report.md, section 7); 16 channels in the 48-pixel first stage, where each channel costs most,
# then kept fer5's validation accuracy (68.90 ± 0.92 against 68.70 ± 0.62, three seeds) in 23% less time: this
# CPU's bf16 kernels run the step 1.4x faster with 16 there than with 24 (docs/report.md, section 8.1).
VGG_WIDTHS = (16, 48, 96, 192)


def conv_bn_relu(c_in, c_out):
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def dense_head(in_features, num_classes):
    """The assignment's classifier: in_features-4096-1024-256-N with its two dropouts (19M weights for 4608 inputs)."""
    return nn.Sequential(
        nn.Dropout(p=0.2),
        nn.Linear(in_features, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 1024),
        nn.ReLU(inplace=True),
        nn.Linear(1024, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )


class FER_CNN(nn.Module):
    """The assignment's network: 4 x (conv3x3-BN-ReLU-maxpool) at 64/128/256/512, then a 4608-4096-1024-256-N head.

    Kept as the assignment wrote it (conv bias on, 48x48 input, 3 input channels by default) so its
    numbers are the assignment's numbers; the only change is `flatten` for `.view`, which also works on
    channels_last tensors.
    """

    def __init__(self, num_classes=5, in_channels=3, input_size=48):
        super().__init__()
        check_input_size("assignment", input_size)
        widths = [in_channels, 64, 128, 256, 512]
        blocks = []
        for c_in, c_out in zip(widths, widths[1:]):
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, 1, 1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ))
        self.conv1, self.conv2, self.conv3, self.conv4 = blocks
        side = input_size // 16
        self.fc = dense_head(512 * side * side, num_classes)

    def forward(self, x):
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


class FERNet(nn.Module):
    """VGG-style: stages of conv3x3-BN-ReLU, max-pool between stages, global average pooling, dropout and
    one linear classifier. `convs_per_stage` is one count for every stage or one count per stage.
    head="fc" swaps pooling and classifier for the assignment's: one more max-pool, flatten, its dense head
    (`dropout` then does not apply); it exists to measure what global pooling is worth.

    Global pooling keeps the classifier at width x classes parameters instead of the assignment's 19M, which is
    where the assignment's network over-fitted; the extra conv per stage buys receptive field instead.
    """

    def __init__(self, num_classes=5, in_channels=1, input_size=48, widths=VGG_WIDTHS,
                 convs_per_stage=2, dropout=0.3, head="gap"):
        super().__init__()
        check_input_size("vgg", input_size, widths=widths, head=head)
        if isinstance(convs_per_stage, int):
            convs_per_stage = (convs_per_stage,) * len(widths)
        if len(convs_per_stage) != len(widths) or min(convs_per_stage) < 1:
            raise ValueError(f"convs_per_stage {convs_per_stage} needs one positive count per stage "
                             f"({len(widths)} stages)")
        layers, c_in = [], in_channels
        for stage, (width, convs) in enumerate(zip(widths, convs_per_stage)):
            for _ in range(convs):
                layers += conv_bn_relu(c_in, width)
                c_in = width
            if stage < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        if head == "gap":
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))
        elif head == "fc":
            side = input_size // 2 ** len(widths)
            self.pool = nn.MaxPool2d(2)
            self.head = dense_head(c_in * side * side, num_classes)
        else:
            raise ValueError(f"unknown head {head!r}; choose gap or fc")

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


# arch name -> (class, default in_channels). The assignment read grayscale JPEGs as RGB, so it keeps 3 channels.
ARCHS = {
    "vgg": (FERNet, 1),
    "assignment": (FER_CNN, 3),
}
# Earlier names: "seed" was the assignment's network until "seed" meant only the random seed.
ARCH_ALIASES = {"seed": "assignment"}


def min_input_size(arch, widths=VGG_WIDTHS, head="gap", **_):
    """The smallest input side (pixels) arch, built with these arguments (build_model's arch_args), takes: every
    max-pool must leave at least one pixel. The assignment's network pools four times before its dense head (16);
    vgg pools between its stages (2 ** (stages - 1), 8 for the default four) and once more before head 'fc'."""
    arch = ARCH_ALIASES.get(arch, arch)
    if arch == "assignment":
        return 16
    return 2 ** (len(widths) - (0 if head == "fc" else 1))


def check_input_size(arch, input_size, **arch_args):
    """ValueError when input_size is below min_input_size(arch, **arch_args)."""
    smallest = min_input_size(arch, **arch_args)
    if input_size < smallest:
        raise ValueError(f"input size {input_size} is too small for {arch}{describe(arch_args)}: it takes {smallest} "
                         "pixels or more")


def describe(arch_args):
    shown = {k: ",".join(map(str, v)) if isinstance(v, (tuple, list)) else v for k, v in arch_args.items()}
    return f" ({', '.join(f'{k} {v}' for k, v in shown.items())})" if shown else ""


def default_in_channels(arch):
    return ARCHS[ARCH_ALIASES.get(arch, arch)][1]


def build_model(arch, num_classes, in_channels=None, input_size=48, **arch_args):
    """A freshly initialised network: arch one of ARCHS (or an alias), num_classes outputs, input
    in_channels x input_size x input_size (in_channels defaults to the arch's). ValueError for a bad arch or
    arguments it cannot build."""
    arch = ARCH_ALIASES.get(arch, arch)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    cls, channels = ARCHS[arch]
    return cls(num_classes=num_classes, in_channels=in_channels or channels, input_size=input_size,
               **arch_args)


def fuse_batch_norms(model):
    """For inference: every BatchNorm2d that directly follows a Conv2d in a Sequential folded into the
    convolution's weights and bias, and replaced by an Identity (indices kept), in place; -> model, in eval
    mode. The outputs stay those of the eval-mode model (within float rounding, about 1e-6), and one face's
    views take about 12% less time on this project's CPU. Not for a model that will be trained again."""
    model.eval()
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequential)
        for i in range(len(layers) - 1):
            conv, norm = layers[i], layers[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequential[i] = fuse_conv_bn_eval(conv, norm)
                sequential[i + 1] = nn.Identity()
    return model


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())

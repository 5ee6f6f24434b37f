"""hcgnet's network behind the published implementation's state-dict key names (see ../README.md)."""
import os
from pathlib import Path

import numpy as np
from torch import nn

import regularization  # noqa: F401  the published modules import the repository's own packages
from hcgnet.models import create_model
from hcgnet.models.checkpoints import published_to_hcgnet_key

KEYS = Path(__file__).resolve().parents[2] / "fixtures" / "official-keys"


class PublishedNames(nn.Module):
    def __init__(self, name: str, keys: str, num_classes: int):
        super().__init__()
        self.net = create_model(name, num_classes=num_classes)
        published = [line.split("\t")[0] for line in (KEYS / keys).read_text().splitlines() if line.strip()]
        self.to_published = {published_to_hcgnet_key(k): k for k in published}
        self.to_ours = {v: k for k, v in self.to_published.items()}

    def state_dict(self, *args, **kwargs):
        return {self.to_published[k]: v for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state_dict, strict=True):
        return self.net.load_state_dict({self.to_ours[k]: v for k, v in state_dict.items()}, strict)

    def forward(self, x):
        np.int(1)  # as the published CIFAR transitions' DropBlock scheduler does in every forward
        out = self.net(x)
        if os.environ.get("HCGNET_STANDIN_PERTURB"):  # a network that is not the same: refused by the bench
            out = out + 0.01
        return out

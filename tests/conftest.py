"""Small streams and backbones shared by the tests (CPU, seconds each)."""
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="No loggers specified")

import avalanche_convprompt  # noqa: E402,F401  (silences Avalanche's import-time QP warning)
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def tiny_vit(seed: int = 0) -> VisionTransformer:
    """A random 4-block ViT on 32x32 images: enough to exercise every code path."""
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=0)


def blob_datasets(class_ids, train_per_class=12, test_per_class=6, seed=0):
    """Images scattered around one random prototype per class: learnable, not trivial."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(len(class_ids), 3, 32, 32, generator=g)

    def make(n):
        idx = torch.arange(len(class_ids)).repeat_interleave(n)
        x = (protos[idx] + 0.25 * torch.randn(len(idx), 3, 32, 32, generator=g)).clamp(0, 1)
        y = torch.as_tensor(class_ids)[idx]
        return _make_taskaware_tensor_classification_dataset(x, y)

    return make(train_per_class), make(test_per_class)


@pytest.fixture
def tiny_convprompt_kwargs():
    return dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3, train_mb_size=16, train_epochs=1,
                eval_mb_size=32, device="cpu", evaluator=None)


class TargetedDataset(torch.utils.data.Dataset):
    """A plain dataset with ``targets`` as torchvision's have, no task labels; images as given or as PIL images."""

    def __init__(self, images, targets, pil=False):
        self.images, self.targets, self.pil = images, [int(t) for t in targets], pil

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image
        return (Image.fromarray(self.images[i]) if self.pil else self.images[i]), self.targets[i]


def refused(strategy, experience) -> str:
    """Train ``strategy`` on ``experience``, which must fail with ``ValueError`` leaving the model untouched."""
    before = {k: v.clone() for k, v in strategy.net.state_dict().items()}
    with pytest.raises(ValueError) as err:
        strategy.train(experience)
    after = strategy.net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    return str(err.value)

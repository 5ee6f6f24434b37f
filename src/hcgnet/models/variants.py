"""The paper's networks as data, and the parser for its notation ``HCGNet-(n_1,...,n_m)-(k=k_1,...,k_m)``."""
import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from hcgnet.errors import ModelSpecError, close_match


@dataclass(frozen=True)
class Variant:
    """One network: its architecture arguments and the figures published for it."""

    block_depths: Tuple[int, ...]
    growth_rates: Tuple[int, ...]
    stem: str
    num_classes: int
    drop_rate: float = 0.0
    # The paper's figures as printed in its Tables 2 and 3 ("FLOPs" there are multiply-adds), for
    # `hcgnet info`.
    paper_params: Optional[str] = None
    paper_gmacs: Optional[str] = None
    # The figures the published repository's README gives (more digits than the paper; C differs).
    readme_gmacs: Optional[str] = None
    # Exact parameter counts of the published implementation, by class count.
    published_params: Dict[int, int] = field(default_factory=dict)
    published_checkpoint: Optional[str] = None

    @property
    def input_size(self) -> Tuple[int, int, int]:
        return (3, 32, 32) if self.stem == "cifar" else (3, 224, 224)

    @property
    def spec(self) -> str:
        return format_spec(self.block_depths, self.growth_rates)

    def model_kwargs(self) -> dict:
        return dict(
            block_depths=self.block_depths, growth_rates=self.growth_rates, stem=self.stem,
            num_classes=self.num_classes, drop_rate=self.drop_rate,
        )


VARIANTS: Dict[str, Variant] = {
    "hcgnet_a1": Variant((8, 8, 8), (12, 24, 36), "cifar", 10, paper_params="1.1M", paper_gmacs="0.2",
                         readme_gmacs="0.16",
                         published_params={10: 1_065_301, 100: 1_102_651}),
    "hcgnet_a2": Variant((8, 8, 8), (24, 36, 64), "cifar", 10, paper_params="3.1M", paper_gmacs="0.5",
                         readme_gmacs="0.50",
                         published_params={10: 3_069_149, 100: 3_133_679}),
    "hcgnet_a3": Variant((12, 12, 12), (36, 48, 80), "cifar", 10, paper_params="11.4M", paper_gmacs="2.0",
                         readme_gmacs="1.99",
                         published_params={10: 11_239_897, 100: 11_363_647}),
    "hcgnet_b": Variant((3, 6, 12, 8), (32, 48, 64, 96), "imagenet", 1000, drop_rate=0.1, paper_params="12.9M",
                        paper_gmacs="2.0", published_params={1000: 12_845_501},
                        published_checkpoint="HCGNet_B_best.pth.tar"),
    "hcgnet_c": Variant((6, 12, 18, 14), (48, 56, 72, 112), "imagenet", 1000, drop_rate=0.1, paper_params="42.2M",
                        paper_gmacs="7.1", readme_gmacs="7.0", published_params={1000: 42_153_208},
                        published_checkpoint="HCGNet_C_best.pth.tar"),
}

_SPEC = re.compile(r"^\s*hcgnet\s*-\s*\(([^()]*)\)\s*-\s*\(\s*k\s*=\s*([^()]*)\)\s*$", re.IGNORECASE)
SPEC_EXAMPLE = "HCGNet-(8,8,8)-(k=12,24,36)"


def format_spec(block_depths, growth_rates) -> str:
    return f"HCGNet-({','.join(map(str, block_depths))})-(k={','.join(map(str, growth_rates))})"


def looks_like_spec(name: str) -> bool:
    return "(" in name


def _ints(text: str, what: str, spec: str) -> Tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise ModelSpecError(f"malformed spec {spec!r}: {what} must be positive integers, e.g. {SPEC_EXAMPLE}")
    return tuple(int(p) for p in parts)


def parse_spec(spec: str, stem: Optional[str] = None) -> Variant:
    """``HCGNet-(8,8,8)-(k=12,24,36)`` -> a :class:`Variant`. Three blocks take the CIFAR stem (10
    classes), four or more the ImageNet stem (1000 classes), as in the paper, unless ``stem`` is given."""
    m = _SPEC.match(spec)
    if not m:
        raise ModelSpecError(f"malformed spec {spec!r}: write it as in the paper, e.g. {SPEC_EXAMPLE}")
    depths = _ints(m.group(1), "block depths", spec)
    growth = _ints(m.group(2), "growth rates", spec)
    stem = stem or ("imagenet" if len(depths) >= 4 else "cifar")
    return Variant(depths, growth, stem, 1000 if stem == "imagenet" else 10, drop_rate=0.1 if stem == "imagenet" else 0.0)


#: The tag of the authors' released ImageNet weights, as timm names weights: ``hcgnet_b.published_in1k``.
PUBLISHED_TAG = "published_in1k"


def resolve(name_or_spec: str, stem: Optional[str] = None) -> Tuple[str, Variant]:
    """A registered name (with or without its weights' tag, ``hcgnet_b.published_in1k``) or a spec ->
    ``(canonical name, variant)``; a one-line error otherwise."""
    key = name_or_spec.strip()
    base, dot, tag = key.partition(".")
    if dot and base.lower() in VARIANTS:
        if tag != PUBLISHED_TAG or not VARIANTS[base.lower()].published_checkpoint:
            tags = PUBLISHED_TAG if VARIANTS[base.lower()].published_checkpoint else None
            raise ModelSpecError(f"{base} has no weights tagged {tag!r}; "
                                 + (f"its tags: {tags}" if tags else "it has no published weights"))
        key = base
    if key.lower() in VARIANTS:
        key = key.lower()
        variant = VARIANTS[key]
        if stem is not None and stem != variant.stem:
            variant = Variant(variant.block_depths, variant.growth_rates, stem,
                              1000 if stem == "imagenet" else 10, variant.drop_rate)
        return key, variant
    if looks_like_spec(key):
        variant = parse_spec(key, stem)
        for name, known in VARIANTS.items():  # a spec of a published network is that network
            if (known.block_depths, known.growth_rates, known.stem) == (
                    variant.block_depths, variant.growth_rates, variant.stem):
                return name, known
        return variant.spec, variant
    raise ModelSpecError(
        f"unknown model {name_or_spec!r}{close_match(key.lower(), VARIANTS)}; choose one of {', '.join(VARIANTS)} or write a spec like {SPEC_EXAMPLE}"
    )


#: Input side above which a CIFAR-stem network (no downsampling before its first hybrid block) gets slow.
CIFAR_STEM_LARGE = 64


def cifar_stem_note(name: str, stem: str, size: int) -> Optional[str]:
    """A sentence for a network with the CIFAR stem meeting images larger than :data:`CIFAR_STEM_LARGE` px
    (for ``info`` and the trainer's log); None otherwise."""
    if stem != "cifar" or size <= CIFAR_STEM_LARGE:
        return None
    return (f"{name} has the CIFAR stem (no downsampling before the first hybrid block), so at {size} px every "
            "layer runs at full resolution (16x the positions after the ImageNet stem's stride 4); for large images "
            "pass --stem imagenet")

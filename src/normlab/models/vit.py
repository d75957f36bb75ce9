"""Small transformers with a pluggable normalization layer: a vision transformer that
classifies Fashion-MNIST and a causal one that predicts each image's next row of pixels.

Both share :class:`TransformerEncoder`: ``depth`` blocks of self-attention and a
two-layer feed-forward network, each inside a residual connection, with the norm named
by the registry (:func:`normlab.nn.registry.create_norm_layer`) at one of two places
(Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture")::

    post-LN (Vaswani et al. 2017):  x = norm(x + attention(x));  x = norm(x + ffn(x))
    pre-LN:                         x = x + attention(norm(x));  x = x + ffn(norm(x))
                                    and one more norm after the last block

The norm sees the tokens as ``(N * T, D)`` features (:class:`TokenNorm`): layer norm,
RMS norm and DyT normalize each token on its own; batch norm takes its statistics over
the batch *and* the tokens, as a transformer with batch norm does (Shen et al. 2020).

Shapes of :class:`VisionTransformer` for a ``(N, 1, 28, 28)`` input and 7x7 patches::

    patches          (N, 16, 49)     16 tokens of 7 * 7 pixels, row by row
    linear 49->D     (N, 16, D)      + learned position embedding
    encoder          (N, 16, D)
    mean over tokens (N, D)
    linear D->C      (N, num_classes)

Shapes of :class:`NextRowTransformer` for rows ``(N, T, 28)`` (``T <= 28``)::

    linear 28->D     (N, T, D)       + learned position embedding
    causal encoder   (N, T, D)       position t attends to positions <= t
    linear D->28     (N, T, 28)      output t predicts row t + 1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normlab.nn.registry import create_norm_layer

__all__ = [
    "PLACEMENTS",
    "FeedForward",
    "NextRowTransformer",
    "SelfAttention",
    "TokenNorm",
    "TransformerBlock",
    "TransformerEncoder",
    "VisionTransformer",
    "next_row_pairs",
    "patchify",
]

PLACEMENTS = ("pre", "post")  # the norm inside the residual branch, or after the sum
POSITION_STD = 0.02  # the learned position embeddings' initial std (as ViT's)


class TokenNorm(nn.Module):
    """A norm of fully connected features ``(N, D)`` applied to tokens ``(N, T, D)``.

    The tokens are seen as ``N * T`` samples of ``D`` features: a per-sample norm (layer,
    RMS, DyT) normalizes each token; batch norm's statistics are over the batch and the
    tokens together, per feature.

    Args:
        name: a registry name (:func:`normlab.nn.registry.norm_names`), built at ``dims=0``.
        width: D, the features of each token.

    Shape:
        - Input: :math:`(N, T, D)`
        - Output: :math:`(N, T, D)`

    Example:
        >>> norm = TokenNorm("layer", 8)
        >>> norm(torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, name: str, width: int) -> None:
        super().__init__()
        self.norm = create_norm_layer(name, width, dims=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t, d = tokens.shape
        return self.norm(tokens.reshape(n * t, d)).reshape(n, t, d)


class SelfAttention(nn.Module):
    r"""Multi-head scaled dot-product self-attention (Vaswani et al. 2017).

    .. math::
        \text{head}_h = \operatorname{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{D/H}}
        + M\right) V_h, \qquad y = [\text{head}_1, \dots, \text{head}_H]\, W_o^\top + b_o

    with :math:`Q, K, V` from one linear map of the tokens, and :math:`M = -\infty` above
    the diagonal when ``causal`` (token ``t`` sees tokens ``<= t`` only), else 0.

    Args:
        width: D, the token features (a multiple of ``heads``).
        heads: H.
        causal: mask the attention to earlier tokens.

    Shape:
        - Input: :math:`(N, T, D)`
        - Output: :math:`(N, T, D)`

    Example:
        >>> attention = SelfAttention(16, heads=4, causal=True)
        >>> attention(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t, d = tokens.shape
        q, k, v = self.qkv(tokens).view(n, t, 3, self.heads, d // self.heads).unbind(2)
        heads = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=self.causal
        )  # (N, H, T, D / H)
        return self.out(heads.transpose(1, 2).reshape(n, t, d))


class FeedForward(nn.Module):
    r"""The position-wise feed-forward network: :math:`y = W_2\,\text{GELU}(W_1 x + b_1) + b_2`.

    ``fc2.weight`` is :math:`W^2`, whose gradient at initialisation Xiong et al. (2020)
    compare across layers.

    Args:
        width: D, the token features. hidden: the hidden features.

    Shape:
        - Input: :math:`(N, T, D)`
        - Output: :math:`(N, T, D)`

    Example:
        >>> FeedForward(8, 16)(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(tokens)))


class TransformerBlock(nn.Module):
    """One block: attention and feed-forward, each in a residual connection, with the norm
    before each branch (``"pre"``) or after each sum (``"post"``)::

        pre:  x = x + attention(norm1(x));  y = x + mlp(norm2(x))
        post: x = norm1(x + attention(x));  y = norm2(x + mlp(x))

    Args:
        width: D. heads: attention heads. hidden: the feed-forward network's hidden
        features. norm: a registry name. placement: ``"pre"`` or ``"post"``. causal:
        each token attends to earlier tokens only.

    Shape:
        - Input: :math:`(N, T, D)`
        - Output: :math:`(N, T, D)`

    Example:
        >>> block = TransformerBlock(8, 2, 16, "layer", "post", causal=False)
        >>> block(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(
        self, width: int, heads: int, hidden: int, norm: str, placement: str, causal: bool
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        self.placement = placement
        self.norm1 = TokenNorm(norm, width)
        self.attention = SelfAttention(width, heads, causal)
        self.norm2 = TokenNorm(norm, width)
        self.mlp = FeedForward(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.placement == "pre":
            x = x + self.attention(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.mlp(x))


class TransformerEncoder(nn.Module):
    """``depth`` :class:`TransformerBlock` s; pre-LN adds a final norm after the last block
    (Xiong et al. 2020's Pre-LN Transformer), post-LN ends on its blocks' last norm.

    Args:
        width: D. depth: the blocks. heads: attention heads. hidden: the feed-forward
        network's hidden features. norm: a registry name. placement: ``"pre"`` or
        ``"post"``. causal: each token attends to earlier tokens only.

    Shape:
        - Input: :math:`(N, T, D)`
        - Output: :math:`(N, T, D)`

    Example:
        >>> encoder = TransformerEncoder(8, 2, 2, 16, "rms", "pre")
        >>> encoder(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        hidden: int,
        norm: str,
        placement: str,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, hidden, norm, placement, causal) for _ in range(depth)
        )
        self.final_norm = TokenNorm(norm, width) if placement == "pre" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)


def _init_linear(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every linear layer (the initialisation
    Xiong et al. 2020 analyse)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches, row by row.

    Shape:
        ``(N, C, H, W)`` -> ``(N, (H / p) * (W / p), C * p * p)``.

    Example:
        >>> patchify(torch.arange(16.0).view(1, 1, 4, 4), 2)[0, 1]
        tensor([2., 3., 6., 7.])
    """
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of patch_size {patch_size}"
        )
    patches = F.unfold(images, kernel_size=patch_size, stride=patch_size)  # (N, C*p*p, T)
    return patches.transpose(1, 2)


class VisionTransformer(nn.Module):
    """A small vision transformer (Dosovitskiy et al. 2021) with the norm by name and place.

    Patches are embedded linearly with a learned position embedding; the class scores
    come from the mean of the encoder's tokens (no class token).

    Args:
        norm: a registry name: ``"layer"``, ``"rms"``, ``"dyt"``, ``"batch"``, ``"none"``, ...
        placement: ``"pre"`` or ``"post"`` (see the module docstring).
        image_size: H = W. patch_size: p (divides ``image_size``). channels: C.
        width: D. depth: blocks. heads: attention heads. mlp_ratio: hidden / D.
        num_classes: the outputs.

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: :math:`(N, \\text{num\\_classes})`

    Example:
        >>> model = VisionTransformer(norm="rms", placement="post", width=32, depth=2)
        >>> model(torch.randn(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        norm: str = "layer",
        placement: str = "pre",
        *,
        image_size: int = 28,
        patch_size: int = 7,
        channels: int = 1,
        width: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        self.patch_size = patch_size
        tokens = (image_size // patch_size) ** 2
        self.embed = nn.Linear(channels * patch_size * patch_size, width)
        self.position = nn.Parameter(torch.randn(1, tokens, width) * POSITION_STD)
        self.encoder = TransformerEncoder(
            width, depth, heads, mlp_ratio * width, norm, placement, causal=False
        )
        self.head = nn.Linear(width, num_classes)
        _init_linear(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(patchify(images, self.patch_size)) + self.position
        return self.head(self.encoder(tokens).mean(dim=1))


def next_row_pairs(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets of next-row prediction: rows ``0..H-2`` and rows ``1..H-1``.

    Shape:
        ``(N, 1, H, W)`` or ``(N, H, W)`` -> ``(N, H - 1, W)``, ``(N, H - 1, W)``.
    """
    rows = images.reshape(images.shape[0], images.shape[-2], images.shape[-1])
    return rows[:, :-1], rows[:, 1:]


class NextRowTransformer(nn.Module):
    """A causal transformer over an image's rows: output ``t`` predicts row ``t + 1`` from
    rows ``0..t`` (attention masked to earlier rows).

    Only the attention is causal: a norm with statistics over the tokens (batch norm over
    batch and time) lets every position see statistics of the later rows, which the
    prediction may learn to read.

    Args:
        norm, placement, width, depth, heads, mlp_ratio: as :class:`VisionTransformer`.
        row_size: W, the pixels of a row. max_rows: the longest sequence (H).

    Shape:
        - Input: :math:`(N, T, W)` rows, :math:`T \\le` ``max_rows``
        - Output: :math:`(N, T, W)`, output ``t`` predicting row ``t + 1``

    Example:
        >>> model = NextRowTransformer(width=32, depth=2)
        >>> inputs, targets = next_row_pairs(torch.randn(3, 1, 28, 28))
        >>> model(inputs).shape == targets.shape
        True
    """

    def __init__(
        self,
        norm: str = "layer",
        placement: str = "pre",
        *,
        row_size: int = 28,
        max_rows: int = 28,
        width: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(row_size, width)
        self.position = nn.Parameter(torch.randn(1, max_rows, width) * POSITION_STD)
        self.encoder = TransformerEncoder(
            width, depth, heads, mlp_ratio * width, norm, placement, causal=True
        )
        self.readout = nn.Linear(width, row_size)
        _init_linear(self)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        steps = rows.shape[1]
        if steps > self.position.shape[1]:
            raise ValueError(f"expected at most {self.position.shape[1]} rows, got {steps}")
        tokens = self.embed(rows) + self.position[:, :steps]
        return self.readout(self.encoder(tokens))

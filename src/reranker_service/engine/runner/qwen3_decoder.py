"""A Qwen3 decoder over one packed token stream, on the checkpoint's own weights.

transformers' decoder takes ``[batch, tokens]`` and builds its masks itself; a packed stream is
one row whose mask only its layout knows. So this is the decoder layer written out (the same
operations in the same order as transformers' ``Qwen3DecoderLayer``, whose weights it reads)
with the attention and its mask passed in. One function computes every layer, the layer's
weights its arguments: compiled, the graph of one layer serves all of them, which keeps a
compile per pass size short.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own name for it

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, float], torch.Tensor]
"""``(queries [1, heads, T, d], keys, values [1, kv_heads, T, d], mask, scale)`` to
``[1, heads, T, d]``."""


class LayerWeights(NamedTuple):
    input_norm: torch.Tensor
    q: torch.Tensor
    q_bias: torch.Tensor | None
    k: torch.Tensor
    k_bias: torch.Tensor | None
    v: torch.Tensor
    v_bias: torch.Tensor | None
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


class HeadShape(NamedTuple):
    heads: int
    kv_heads: int
    head_dim: int
    eps: float

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)


class UnpackableModelError(Exception):
    """The checkpoint uses a Qwen3 feature the packed decoder does not compute."""


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3's RMSNorm: in fp32, scaled in the input's type."""
    dtype = hidden.dtype
    widened = hidden.to(torch.float32)
    widened = widened * torch.rsqrt(widened.pow(2).mean(-1, keepdim=True) + eps)
    return weight * widened.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def decoder_layer(
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: Any,
    weights: LayerWeights,
    shape: HeadShape,
    attention: Attention,
) -> torch.Tensor:
    """One layer over a ``[T, hidden]`` stream; ``cos``/``sin`` are ``[1, 1, T, head_dim]``."""
    tokens = hidden.shape[0]
    residual = hidden
    normed = rms_norm(hidden, weights.input_norm, shape.eps)
    queries = F.linear(normed, weights.q, weights.q_bias).view(tokens, shape.heads, -1)
    keys = F.linear(normed, weights.k, weights.k_bias).view(tokens, shape.kv_heads, -1)
    values = F.linear(normed, weights.v, weights.v_bias).view(tokens, shape.kv_heads, -1)
    queries = rms_norm(queries, weights.q_norm, shape.eps).transpose(0, 1).unsqueeze(0)
    keys = rms_norm(keys, weights.k_norm, shape.eps).transpose(0, 1).unsqueeze(0)
    values = values.transpose(0, 1).unsqueeze(0)
    queries = queries * cos + _rotate_half(queries) * sin
    keys = keys * cos + _rotate_half(keys) * sin
    attended = attention(queries, keys, values, mask, shape.scale)
    attended = attended[0].transpose(0, 1).reshape(tokens, -1)
    hidden = residual + F.linear(attended, weights.o, weights.o_bias)
    residual = hidden
    normed = rms_norm(hidden, weights.post_norm, shape.eps)
    mlp = F.linear(
        F.silu(F.linear(normed, weights.gate)) * F.linear(normed, weights.up), weights.down
    )
    return residual + mlp


LayerFunction = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, Any, LayerWeights, HeadShape, Attention],
    torch.Tensor,
]


class PackedDecoder:
    """The weights of a transformers ``Qwen3Model`` (shared, not copied), read as the packed
    forward takes them."""

    def __init__(self, backbone: Any) -> None:
        config = backbone.config
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UnpackableModelError(f"activation {config.hidden_act!r}, not silu")
        if getattr(config, "use_sliding_window", False):
            raise UnpackableModelError("sliding-window attention")
        if getattr(backbone.layers[0].mlp.gate_proj, "bias", None) is not None:
            raise UnpackableModelError("MLP biases")
        self._backbone = backbone
        self.embedding = _weight(backbone.embed_tokens)
        self.rotary = backbone.rotary_emb
        self.final_norm = _weight(backbone.norm)
        self.shape = HeadShape(
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None)
            or config.hidden_size // config.num_attention_heads,
            eps=float(config.rms_norm_eps),
        )
        self.layers = [_layer_weights(layer) for layer in backbone.layers]
        self.dtype = self.embedding.dtype
        self.device = self.embedding.device

    def rotary_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos``, ``sin`` of ``positions`` (``[T]``) as ``[1, 1, T, head_dim]``, by the
        checkpoint's own rotary embedding (its scaling included)."""
        probe = self.embedding[:1].unsqueeze(0)
        cos, sin = self.rotary(probe, positions.unsqueeze(0))
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def hidden_states(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: Any,
        attention: Attention,
        layer: LayerFunction = decoder_layer,
    ) -> torch.Tensor:
        """The last layer's output (before the final norm) for every token of the stream."""
        hidden = F.embedding(token_ids, self.embedding)
        cos, sin = self.rotary_tables(positions)
        for weights in self.layers:
            hidden = layer(hidden, cos, sin, mask, weights, self.shape, attention)
        return hidden

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm, applied to the rows that are read."""
        return rms_norm(hidden, self.final_norm, self.shape.eps)


def _weight(module: Any) -> torch.Tensor:
    weight: torch.Tensor = module.weight
    return weight.detach()


def _bias(module: Any) -> torch.Tensor | None:
    bias: torch.Tensor | None = getattr(module, "bias", None)
    return None if bias is None else bias.detach()


def _layer_weights(layer: Any) -> LayerWeights:
    attention, mlp = layer.self_attn, layer.mlp
    return LayerWeights(
        input_norm=_weight(layer.input_layernorm),
        q=_weight(attention.q_proj),
        q_bias=_bias(attention.q_proj),
        k=_weight(attention.k_proj),
        k_bias=_bias(attention.k_proj),
        v=_weight(attention.v_proj),
        v_bias=_bias(attention.v_proj),
        q_norm=_weight(attention.q_norm),
        k_norm=_weight(attention.k_norm),
        o=_weight(attention.o_proj),
        o_bias=_bias(attention.o_proj),
        post_norm=_weight(layer.post_attention_layernorm),
        gate=_weight(mlp.gate_proj),
        up=_weight(mlp.up_proj),
        down=_weight(mlp.down_proj),
    )


def dense_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: Any, scale: float
) -> torch.Tensor:
    """SDPA with a boolean ``[1, 1, T, T]`` mask (True: attends)."""
    return F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=mask, scale=scale, enable_gqa=True
    )


def flex_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: Any, scale: float
) -> torch.Tensor:
    """FlexAttention with a ``BlockMask``: tiles no query of which sees any key are skipped."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    attended: torch.Tensor = flex(
        queries, keys, values, block_mask=mask, scale=scale, enable_gqa=True
    )
    return attended

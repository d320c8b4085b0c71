"""The state-dict layout of guided-diffusion's ``UNetModel``, derived from its module tree.

Written from reading openai/guided-diffusion ``guided_diffusion/unet.py`` and ``nn.py`` (commit
18ff408) and DifFace's fork of it, zsyOAOA/DifFace ``models/unet.py`` (commits cdbc630 and
fbbc9f3), not from flipnet's own module names, so a test built on it checks flipnet's loader
against the real key names and shapes. No code is copied; each rule cites where it comes from
(line numbers are approximate; the quoted statement is the exact anchor).

``block_plan`` walks the network the way ``UNetModel.__init__`` builds it and names each
module that owns parameters; ``guided_layout`` flattens that to ``(key, shape)`` pairs;
``reference_forward`` runs the network on a state dict keyed like that, with plain torch ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# guided-diffusion script_util.create_model: channel_mult when the flag is "" (image size -> mult)
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4),
                        128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


@dataclass(frozen=True)
class GDConfig:
    """The architecture flags that shape a guided-diffusion / DifFace ``UNetModel``.

    ``attention_resolutions`` are feature-map sizes in pixels, as script_util's flags
    ("32,16,8") and DifFace's ``UNetModel`` (``ds = image_size``, halved per level) take them;
    guided-diffusion's own ``UNetModel`` takes downsample rates, which ``create_model`` computes
    as ``image_size // int(res)``. ``num_res_blocks`` may be one number or one per level
    (DifFace). ``num_heads_upsample = -1`` means ``num_heads`` (guided-diffusion); DifFace's
    output-block attention passes no ``num_heads`` at all, i.e. 1 head unless
    ``num_head_channels`` is set.
    """

    image_size: int
    num_channels: int
    channel_mult: tuple[float, ...] = ()
    num_res_blocks: int | tuple[int, ...] = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    learn_sigma: bool = False
    in_channels: int = 3

    def mult(self) -> tuple[float, ...]:
        """channel_mult, or create_model's default for the image size."""
        return tuple(self.channel_mult) or DEFAULT_CHANNEL_MULT[self.image_size]

    def blocks(self) -> tuple[int, ...]:
        """Residual blocks per level (an int is repeated, as DifFace's UNetModel does)."""
        n = self.num_res_blocks
        return (n,) * len(self.mult()) if isinstance(n, int) else tuple(n)


@dataclass(frozen=True)
class Layer:
    """One module inside a ``TimestepEmbedSequential``: what it is, its key prefix, its sizes."""

    kind: str  # "conv" | "res" | "attn" | "down" | "up"
    prefix: str
    cin: int
    cout: int
    heads: int = 0  # attn only
    resample: str = ""  # res only: "" | "down" | "up"


def _heads(cfg: GDConfig, ch: int, num_heads: int) -> int:
    # unet.py AttentionBlock.__init__ (~l.270): num_head_channels == -1 -> num_heads, else
    # channels // num_head_channels (asserting divisibility)
    if cfg.num_head_channels == -1:
        return num_heads
    assert ch % cfg.num_head_channels == 0
    return ch // cfg.num_head_channels


def block_plan(cfg: GDConfig) -> list[list[Layer]]:
    """Every ``TimestepEmbedSequential`` of input_blocks, middle_block, output_blocks, in order.

    Follows ``UNetModel.__init__`` (unet.py ~l.480-610). ``ds`` is the downsample rate, as
    guided-diffusion counts it; attention sits where ``image_size // ds`` is listed in pixels.
    """
    mc, mult, nres = cfg.num_channels, cfg.mult(), cfg.blocks()
    attn_ds = {cfg.image_size // px for px in cfg.attention_resolutions}  # create_model
    heads_up = cfg.num_heads_upsample if cfg.num_heads_upsample != -1 else cfg.num_heads
    seqs: list[list[Layer]] = []

    # ~l.478 `ch = input_ch = int(channel_mult[0] * model_channels)`; input_blocks[0] is one
    # 3x3 conv_nd(in_channels -> ch)
    ch = int(mult[0] * mc)
    seqs.append([Layer("conv", "input_blocks.0.0", cfg.in_channels, ch)])
    skip_chans, ds = [ch], 1
    for level, m in enumerate(mult):
        # ~l.485: num_res_blocks x [ResBlock(ch -> int(mult * mc)), AttentionBlock if ds listed]
        for _ in range(nres[level]):
            i = len(seqs)
            out = int(m * mc)
            seq = [Layer("res", f"input_blocks.{i}.0", ch, out)]
            ch = out
            if ds in attn_ds:
                seq.append(Layer("attn", f"input_blocks.{i}.1", ch, ch,
                                 heads=_heads(cfg, ch, cfg.num_heads)))
            seqs.append(seq)
            skip_chans.append(ch)
        # ~l.510 `if level != len(channel_mult) - 1`: ResBlock(down=True) with resblock_updown,
        # else Downsample(ch, conv_resample); channels unchanged (out_ch = ch); `ds *= 2`
        if level != len(mult) - 1:
            i = len(seqs)
            seqs.append([Layer("res", f"input_blocks.{i}.0", ch, ch, resample="down")
                         if cfg.resblock_updown else Layer("down", f"input_blocks.{i}.0", ch, ch)])
            skip_chans.append(ch)
            ds *= 2
    # ~l.537 middle_block = ResBlock(ch), AttentionBlock(ch, num_heads), ResBlock(ch)
    seqs.append([Layer("res", "middle_block.0", ch, ch),
                 Layer("attn", "middle_block.1", ch, ch, heads=_heads(cfg, ch, cfg.num_heads)),
                 Layer("res", "middle_block.2", ch, ch)])
    # ~l.564 output_blocks: per level (deepest first) num_res_blocks + 1 x
    # [ResBlock(ch + skip -> int(mc * mult)), AttentionBlock(num_heads_upsample) if ds listed,
    #  and on the last one of every level but 0: ResBlock(up=True) or Upsample; `ds //= 2`]
    j = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(nres[level] + 1):
            out = int(m * mc)
            seq = [Layer("res", f"output_blocks.{j}.0", ch + skip_chans.pop(), out)]
            ch = out
            if ds in attn_ds:
                seq.append(Layer("attn", f"output_blocks.{j}.{len(seq)}", ch, ch,
                                 heads=_heads(cfg, ch, heads_up)))
            if level and i == nres[level]:
                p = f"output_blocks.{j}.{len(seq)}"
                seq.append(Layer("res", p, ch, ch, resample="up") if cfg.resblock_updown
                           else Layer("up", p, ch, ch))
                ds //= 2
            seqs.append(seq)
            j += 1
    return seqs


def _conv(key: str, cin: int, cout: int, k: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{key}.weight", (cout, cin, k, k)), (f"{key}.bias", (cout,))]


def _norm(key: str, ch: int) -> list[tuple[str, tuple[int, ...]]]:
    # nn.py normalization(): GroupNorm32(32, channels), affine -> weight, bias (C,)
    return [(f"{key}.weight", (ch,)), (f"{key}.bias", (ch,))]


def _layer_keys(layer: Layer, cfg: GDConfig) -> list[tuple[str, tuple[int, ...]]]:
    p, cin, cout = layer.prefix, layer.cin, layer.cout
    if layer.kind == "conv":
        return _conv(p, cin, cout, 3)
    if layer.kind == "down":
        # unet.py Downsample (~l.110): conv_resample -> self.op = conv_nd(3x3, stride 2);
        # else self.op = avg_pool_nd (no parameters)
        return _conv(f"{p}.op", cin, cout, 3) if cfg.conv_resample else []
    if layer.kind == "up":
        # unet.py Upsample (~l.80): use_conv -> self.conv = conv_nd(3x3); else nothing
        return _conv(f"{p}.conv", cin, cout, 3) if cfg.conv_resample else []
    if layer.kind == "attn":
        # unet.py AttentionBlock.__init__ (~l.275): norm = normalization(C);
        # qkv = conv_nd(1, C, 3C, 1) -> (3C, C, 1); proj_out = zero_module(conv_nd(1, C, C, 1));
        # QKVAttention(Legacy) hold no parameters
        return (_norm(f"{p}.norm", cin)
                + [(f"{p}.qkv.weight", (3 * cin, cin, 1)), (f"{p}.qkv.bias", (3 * cin,)),
                   (f"{p}.proj_out.weight", (cin, cin, 1)), (f"{p}.proj_out.bias", (cin,))])
    # unet.py ResBlock.__init__ (~l.165-215): in_layers = [normalization(C_in), SiLU,
    # conv 3x3 C_in -> C_out]; h_upd/x_upd are Upsample/Downsample(use_conv=False) or Identity:
    # no parameters; emb_layers = [SiLU, linear(emb, 2*C_out if use_scale_shift_norm else
    # C_out)]; out_layers = [normalization(C_out), SiLU, Dropout, zero_module(conv 3x3)];
    # skip_connection: Identity when C_out == C_in, else a 1x1 conv (UNetModel never passes
    # use_conv=True, so the 3x3 skip variant does not occur)
    emb = 4 * cfg.num_channels
    keys = (_norm(f"{p}.in_layers.0", cin) + _conv(f"{p}.in_layers.2", cin, cout, 3)
            + [(f"{p}.emb_layers.1.weight",
                (2 * cout if cfg.use_scale_shift_norm else cout, emb)),
               (f"{p}.emb_layers.1.bias", (2 * cout if cfg.use_scale_shift_norm else cout,))]
            + _norm(f"{p}.out_layers.0", cout) + _conv(f"{p}.out_layers.3", cout, cout, 3))
    if cin != cout:
        keys += _conv(f"{p}.skip_connection", cin, cout, 1)
    return keys


def guided_layout(cfg: GDConfig) -> list[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` for every tensor in ``UNetModel(...).state_dict()``, in module order."""
    mc = cfg.num_channels
    # unet.py ~l.466 time_embed = [linear(mc, 4mc), SiLU, linear(4mc, 4mc)] -> .0 and .2
    keys = [("time_embed.0.weight", (4 * mc, mc)), ("time_embed.0.bias", (4 * mc,)),
            ("time_embed.2.weight", (4 * mc, 4 * mc)), ("time_embed.2.bias", (4 * mc,))]
    for seq in block_plan(cfg):
        for layer in seq:
            keys += _layer_keys(layer, cfg)
    # ~l.612 out = [normalization(ch), SiLU, zero_module(conv_nd(input_ch, out_channels, 3))];
    # script_util: out_channels = 6 with learn_sigma (eps, then the variance interpolation)
    ch = int(cfg.mult()[0] * mc)
    out_ch = 2 * cfg.in_channels if cfg.learn_sigma else cfg.in_channels
    return keys + _norm("out.0", ch) + _conv("out.2", ch, out_ch, 3)


def random_state(cfg: GDConfig, *, seed: int = 0, scale: float = 0.2,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A state dict in guided-diffusion's layout (``meta``: shapes only), random: weights
    N(0, 1/fan_in) so a deep network neither saturates nor vanishes, 1-D tensors N(0, scale^2)."""
    if str(device) == "meta":
        return {k: torch.empty(s, device="meta") for k, s in guided_layout(cfg)}
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (scale if len(s) == 1 else math.prod(s[1:]) ** -0.5)
            for k, s in guided_layout(cfg)}


# ---- reference forward, on guided-diffusion keys, following UNetModel.forward and its blocks


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    # nn.py timestep_embedding: freqs exp(-ln(10000) * i / half), [cos, sin]
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


def _resblock(sd, lay: Layer, x, emb, cfg: GDConfig):
    # ResBlock._forward: with up/down, resample after in_layers' norm+SiLU and before its conv,
    # and resample x the same way; FiLM: norm(h) * (1 + scale) + shift, else h + emb
    p = lay.prefix
    h = F.silu(F.group_norm(x, 32, sd[f"{p}.in_layers.0.weight"], sd[f"{p}.in_layers.0.bias"]))
    if lay.resample == "down":
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    elif lay.resample == "up":
        h, x = (F.interpolate(z, scale_factor=2, mode="nearest") for z in (h, x))
    h = F.conv2d(h, sd[f"{p}.in_layers.2.weight"], sd[f"{p}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[f"{p}.emb_layers.1.weight"], sd[f"{p}.emb_layers.1.bias"])
    e = e[:, :, None, None]
    if cfg.use_scale_shift_norm:
        scale, shift = e.chunk(2, dim=1)
        h = F.group_norm(h, 32, sd[f"{p}.out_layers.0.weight"], sd[f"{p}.out_layers.0.bias"])
        h = h * (1 + scale) + shift
    else:
        h = F.group_norm(h + e, 32, sd[f"{p}.out_layers.0.weight"], sd[f"{p}.out_layers.0.bias"])
    h = F.conv2d(F.silu(h), sd[f"{p}.out_layers.3.weight"], sd[f"{p}.out_layers.3.bias"],
                 padding=1)
    if lay.cin != lay.cout:
        x = F.conv2d(x, sd[f"{p}.skip_connection.weight"], sd[f"{p}.skip_connection.bias"])
    return x + h


def _attention(sd, lay: Layer, x, new_order: bool):
    # AttentionBlock._forward + QKVAttentionLegacy / QKVAttention.forward
    p, heads = lay.prefix, lay.heads
    b, c, hh, ww = x.shape
    x = x.reshape(b, c, hh * ww)
    qkv = F.conv1d(F.group_norm(x, 32, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"]),
                   sd[f"{p}.qkv.weight"], sd[f"{p}.qkv.bias"])  # (B, 3C, T)
    ch = c // heads
    if new_order:  # q, k, v first, then heads
        q, k, v = (z.reshape(b * heads, ch, -1) for z in qkv.chunk(3, dim=1))
    else:  # legacy: heads first, each [q ch, k ch, v ch]
        q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
    a = F.conv1d(a, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"])
    return (x + a).reshape(b, c, hh, ww)


def _run(sd, seq: list[Layer], h, emb, cfg: GDConfig, new_order: bool):
    for lay in seq:
        p = lay.prefix
        if lay.kind == "conv":
            h = F.conv2d(h, sd[f"{p}.weight"], sd[f"{p}.bias"], padding=1)
        elif lay.kind == "res":
            h = _resblock(sd, lay, h, emb, cfg)
        elif lay.kind == "attn":
            h = _attention(sd, lay, h, new_order)
        elif lay.kind == "down":
            h = (F.conv2d(h, sd[f"{p}.op.weight"], sd[f"{p}.op.bias"], stride=2, padding=1)
                 if cfg.conv_resample else F.avg_pool2d(h, 2))
        else:  # up
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            if cfg.conv_resample:
                h = F.conv2d(h, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], padding=1)
    return h


def reference_forward(sd: dict[str, torch.Tensor], cfg: GDConfig, x: torch.Tensor,
                      t: torch.Tensor, *, new_order: bool = False) -> torch.Tensor:
    """``UNetModel.forward(x, t)`` on a state dict in guided-diffusion's layout (all channels)."""
    emb = _timestep_embedding(t, cfg.num_channels)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    plan = block_plan(cfg)
    n_in = 1 + sum(cfg.blocks()) + len(cfg.mult()) - 1
    skips, h = [], x
    for seq in plan[:n_in]:  # input_blocks: keep every output for the skips
        h = _run(sd, seq, h, emb, cfg, new_order)
        skips.append(h)
    h = _run(sd, plan[n_in], h, emb, cfg, new_order)  # middle_block
    for seq in plan[n_in + 1:]:  # output_blocks: concat the matching skip on channels
        h = _run(sd, seq, torch.cat([h, skips.pop()], dim=1), emb, cfg, new_order)
    h = F.silu(F.group_norm(h, 32, sd["out.0.weight"], sd["out.0.bias"]))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)

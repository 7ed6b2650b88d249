"""A faster, exactly equivalent dense block: shared batch statistics, one feature buffer, fused kernels.

In a dense block, layer l applies BN_l -> ReLU -> conv to the concatenation [x_0, ..., x_{l-1}]
(paper, eq. 2). Training-mode BN normalises each channel with the mean and variance of the batch, and
every layer that reads feature map x_j sees the *same* x_j of the same batch, so all its consumers
compute the same statistics; only their scale gamma_l and shift beta_l differ. The plain
implementation (torchvision's, and `_DenseBlock`) nevertheless concatenates the inputs again in every
layer, recomputes the statistics of all of them, stores the concatenation and the BN output of every
layer for the backward pass (memory quadratic in depth), and in the backward pass accumulates one
gradient slice per (consumer, feature map) pair.

`FastDenseBlock` computes the same function with less work:

- one buffer X of shape (N, k_0 + L*k, H, W) (channels-last) holds x_0, x_1, ..., and each layer
  writes its k new maps into it: the concatenation is free, layer l reads the channel slice X[:, :c];
- the batch mean and variance of each feature map are computed once, when it is produced, and every
  consumer's BN becomes z = max(0, x * s_l + t_l), s_l = gamma_l / sqrt(var + eps),
  t_l = beta_l - mean * s_l: one fused pass (kernel `affine_relu`);
- the backward pass of all the BNs that read x_j is done once: with dy_l the gradient at BN_l's
  output and xhat = (x - mean) / sqrt(var + eps), BN's backward
      dx = gamma_l / sigma * (dy_l - mean(dy_l) - xhat * mean(dy_l * xhat))
  is linear in gamma_l * dy_l, so the sum over consumers is the same expression applied once to
  D = sum_l gamma_l * dy_l, and mean(D) = sum_l gamma_l * dbeta_l / M, mean(D * xhat) =
  sum_l gamma_l * dgamma_l / M come from the per-layer parameter gradients at no extra cost.
  Each layer's backward is one fused pass (kernel `relu_bwd`: ReLU mask, D += gamma_l * dy_l,
  dbeta_l, dgamma_l), and each feature map gets its gradient from D once (kernel `lincomb`);
- z is recomputed in the backward pass instead of stored (one cheap element-wise pass, no conv), so
  activation memory is linear in depth, as in the memory-efficient implementation of Pleiss et al.
  (2017), without its recomputed convolutions. Per layer only the bottleneck conv's output (4k maps)
  is kept for the backward pass; the block keeps X and the per-channel statistics.
- the bottleneck's BN2-ReLU (on the 4k maps) uses the same kernels: statistics, one fused
  forward pass, one fused backward pass plus one for the input gradient.

- the transition after a block normalises the block's output, whose batch statistics the block has
  already computed: `FastTransition` takes them with the output (channels-last models) and does its
  BN-ReLU in one fused pass (backward: two), instead of BatchNorm's statistics pass, normalisation
  pass and a separate ReLU.

Same parameters, buffers and state_dict keys as `_DenseBlock` (a FastDenseBlock *is* a _DenseBlock
with another forward); the outputs, the gradients and the running statistics equal the plain
block's within float rounding (tests/test_fast_dense.py). Dropout is supported and draws its masks
in the plain block's order, so a seeded run matches too.

Use:  `convert(model)` switches every dense block (and transition) of a DenseNet to the fast
      forward, in place (`convert(model, fast=False)` switches back); nothing else changes.

Kernels: on CPU the fused passes are C++ (fast_dense_cpu.py, built on first use); on any other
device, or with `kernels="torch"`, they are plain PyTorch ops (same math, for CUDA and for tests).
In eval mode with gradients disabled the block runs the same buffer-based forward with running
statistics; in eval mode with gradients enabled it runs the plain forward.

Why one module (~550 lines): the forward and the hand-written backward of `_FastBlockFn`, the
shared-statistics transition and `convert` all rely on one buffer layout and one set of saved
statistics, derived once above; apart, a change to one could silently break another's gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densenet_repro.models.densenet import _DenseBlock, _Transition

KERNELS = ("auto", "cpp", "torch")


# --------------------------------------------------------------------------------------------
# The fused passes (see fast_dense_cpu.py for their definitions). Arguments are 2-D
# (rows = N*H*W, channels) views with contiguous channels (rows may be further apart: a channel
# slice of the block's buffer); per-channel vectors are contiguous float32 (float64 for float64 data).
# --------------------------------------------------------------------------------------------

class TorchKernels:
    """Reference implementation with plain PyTorch ops (any device, any float dtype)."""

    @staticmethod
    def affine_relu(x: Tensor, z: Tensor, scale: Tensor, shift: Tensor) -> None:
        z.copy_(torch.clamp_min(x.to(scale.dtype) * scale + shift, 0.0))

    @staticmethod
    def relu_bwd(dz: Tensor, x: Tensor, d: Tensor, scale: Tensor, shift: Tensor, mean: Tensor,
                 gamma: Tensor, accumulate: bool) -> tuple[Tensor, Tensor]:
        xf = x.to(scale.dtype)
        dy = torch.where(xf * scale + shift > 0, dz.to(scale.dtype), 0.0)
        d.copy_(d.to(scale.dtype) + gamma * dy if accumulate else gamma * dy)
        return dy.sum(0, dtype=torch.float64), (dy * (xf - mean)).sum(0, dtype=torch.float64)

    @staticmethod
    def col_stats(y: Tensor) -> tuple[Tensor, Tensor]:
        yd = y.double()
        mean = yd.mean(0)
        return mean, (yd - mean).square().mean(0)

    @staticmethod
    def lincomb(g: Tensor | None, d: Tensor, x: Tensor, out: Tensor, a: Tensor, b: Tensor, c: Tensor) -> None:
        v = a * d.to(a.dtype) + b * x.to(a.dtype) + c
        out.copy_(v if g is None else g.to(a.dtype) + v)


def _kernels(name: str, device: torch.device):
    if name not in KERNELS:
        raise ValueError(f"unknown kernels {name!r}: use one of {', '.join(KERNELS)}")
    if name == "torch" or (name == "auto" and device.type != "cpu"):
        return TorchKernels
    if device.type != "cpu":
        raise ValueError(f"kernels='cpp' runs on CPU only, the block is on {device}: use kernels='auto'")
    from densenet_repro.models import fast_dense_cpu

    return fast_dense_cpu.load()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _rows(t: Tensor) -> Tensor:
    """(N, C, H, W) channels-last tensor (or a channel slice of one) -> (N*H*W, C) view, no copy."""
    n, c, h, w = t.shape
    if t.stride(1) != 1 and c > 1:
        raise RuntimeError(f"expected a channels-last tensor, got strides {t.stride()}")
    return t.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _face(rows: Tensor, n: int, h: int, w: int) -> Tensor:
    """(N*H*W, C) rows -> the (N, C, H, W) channels-last tensor they are the rows of (a view)."""
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def _is_channels_last(t: Tensor) -> bool:
    """True when t is laid out channels-last (and not also plain contiguous, as 1x1 or 1-channel maps are)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _cl(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last)


# Scratch memory reused across layers, blocks and steps (z, D, ...): allocating ~20 MB per layer
# costs more in page faults than the pass that fills it. Keyed by (name, device, dtype); each
# buffer is only ever used between two kernel calls of one forward or backward pass.
_WORKSPACE: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}


def _workspace(name: str, rows: int, cols: int, like: Tensor) -> Tensor:
    # A buffer made under inference_mode (the engine's evaluation) is an inference tensor, which
    # may not be written outside it (a no_grad forward would fail): one buffer for each mode.
    key = (name, like.device, like.dtype, torch.is_inference_mode_enabled())
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < rows * cols:
        _WORKSPACE.pop(key, None)
        buf = _WORKSPACE[key] = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
    return buf[: rows * cols].view(rows, cols)


def clear_workspace() -> None:
    """Free the scratch buffers the fast blocks keep between steps."""
    _WORKSPACE.clear()


def _momentum(bn: nn.BatchNorm2d) -> float:
    """nn.BatchNorm2d's exponential_average_factor, after counting this batch (as its forward does)."""
    bn.num_batches_tracked.add_(1)
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


@torch.no_grad()
def _update_running(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """Running statistics exactly as nn.BatchNorm2d updates them (unbiased variance)."""
    f = _momentum(bn)
    bn.running_mean.mul_(1 - f).add_(mean.to(bn.running_mean.dtype), alpha=f)
    bn.running_var.mul_(1 - f).add_((var * (count / (count - 1))).to(bn.running_var.dtype), alpha=f)


def _vec_dtype(cdt: torch.dtype) -> torch.dtype:
    """dtype of the per-channel vectors handed to the kernels: float32, or float64 for float64 data."""
    return torch.float64 if cdt == torch.float64 else torch.float32


def _scale_shift(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, vdt: torch.dtype) -> tuple[Tensor, Tensor]:
    """BN as an affine map: s = gamma / sqrt(var + eps), t = beta - mean * s (contiguous, dtype vdt)."""
    s = bn.weight.detach().double() * (var.double() + bn.eps).rsqrt()
    t = bn.bias.detach().double() - mean.double() * s
    return s.to(vdt).contiguous(), t.to(vdt).contiguous()


def _dropout_mask(like: Tensor, p: float, memory_format: torch.memory_format) -> Tensor:
    # F.dropout on a tensor of ones draws the same Bernoulli noise from the same generator as
    # F.dropout(y) in the plain layer, provided the layout is the one the plain layer's y has (the
    # noise is drawn in memory order), so a seeded run gives the same masks.
    ones = torch.ones(like.shape, dtype=like.dtype, device=like.device).contiguous(memory_format=memory_format)
    return F.dropout(ones, p=p, training=True)


def _conv_bwd(grad: Tensor, inp: Tensor, weight: Tensor, padding) -> tuple[Tensor, Tensor]:
    """(grad input, grad weight) of a stride-1 bias-free conv."""
    gi, gw, _ = torch.ops.aten.convolution_backward.default(
        grad, inp, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0], 1, [True, True, False])
    return gi, gw


# --------------------------------------------------------------------------------------------
# The block as one autograd Function
# --------------------------------------------------------------------------------------------

class _FastBlockFn(torch.autograd.Function):
    """Training forward/backward of a whole dense block. Inputs: x0 and the layers' parameters."""

    @staticmethod
    def forward(ctx, block: "FastDenseBlock", kern, cdt: torch.dtype, x0: Tensor, *params: Tensor) -> Tensor:
        layers = list(block.values())
        n, k0, h, w = x0.shape
        k = block.growth_rate
        m = n * h * w  # rows; BN statistics are over these N*H*W values per channel
        ct = k0 + len(layers) * k
        vdt = _vec_dtype(cdt)
        # X: (N*H*W, C_total) rows of the block's output [x_0, x_1, ..., x_L]; X4 its NCHW face
        X = torch.empty((m, ct), dtype=cdt, device=x0.device)
        X4 = _face(X, n, h, w)
        X4[:, :k0].copy_(x0)
        mean = torch.empty(ct, dtype=torch.float64, device=x0.device)
        var = torch.empty_like(mean)
        mean[:k0], var[:k0] = kern.col_stats(X[:, :k0])
        # the layout the plain block computes in (conv outputs follow their input's layout)
        plain_format = torch.channels_last if _is_channels_last(x0) else torch.contiguous_format
        saved = []
        for i, layer in enumerate(layers):
            c = k0 + i * k  # layer i+1 reads k_0 + k*i maps
            _update_running(layer.norm1, mean[:c], var[:c], m)
            s1, t1 = _scale_shift(layer.norm1, mean[:c], var[:c], vdt)
            z = _workspace("z", m, c, X)
            kern.affine_relu(X[:, :c], z, s1, t1)  # BN1-ReLU of [x_0..x_i]: (N*H*W, c)
            w1 = layer.conv1.weight.to(cdt)  # what autocast would feed the conv
            y = F.conv2d(_face(z, n, h, w), w1, None, 1, layer.conv1.padding)
            mask1 = mask2 = y1 = stats2 = w2 = None
            if layer.drop_rate > 0:
                mask1 = _dropout_mask(y, layer.drop_rate, plain_format)
                y = y * mask1
            if layer.bottleneck:  # BN2-ReLU-conv3x3 on the 4k maps y1
                y1 = _cl(y)
                y1r = _rows(y1)
                mean2, var2 = kern.col_stats(y1r)
                _update_running(layer.norm2, mean2, var2, m)
                s2, t2 = _scale_shift(layer.norm2, mean2, var2, vdt)
                stats2 = (mean2, var2, s2, t2)
                z = _workspace("z", m, y1.shape[1], X)
                kern.affine_relu(y1r, z, s2, t2)
                w2 = layer.conv2.weight.to(cdt)
                y = F.conv2d(_face(z, n, h, w), w2, None, 1, layer.conv2.padding)
                if layer.drop_rate > 0:
                    mask2 = _dropout_mask(y, layer.drop_rate, plain_format)
                    y = y * mask2
            X4[:, c:c + k].copy_(y)  # x_{i+1}: (N, k, H, W)
            mean[c:c + k], var[c:c + k] = kern.col_stats(X[:, c:c + k])
            saved.append((y1, stats2, mask1, mask2, s1, t1, w1, w2))
        ctx.block, ctx.kern, ctx.cdt, ctx.x0_dtype = block, kern, cdt, x0.dtype
        ctx.layer_saved = saved
        ctx.shape = (n, k0, h, w, k, ct)
        ctx.save_for_backward(X, mean, var)
        block._last_stats = (mean, var)  # handed to the next transition with the output (see FastTransition)
        return X4

    @staticmethod
    def backward(ctx, gX4: Tensor):
        X, mean, var = ctx.saved_tensors
        block, kern, cdt = ctx.block, ctx.kern, ctx.cdt
        n, k0, h, w, k, ct = ctx.shape
        m = n * h * w
        layers = list(block.values())
        vdt = _vec_dtype(cdt)
        gX = _rows(_cl(gX4.to(cdt)))
        D = _workspace("D", m, ct, X).zero_()  # D = sum over consumers l of gamma_l * dy_l
        A = torch.zeros(ct, dtype=torch.float64, device=X.device)  # sum_l gamma_l * dbeta_l
        B = torch.zeros_like(A)  # sum_l gamma_l * dgamma_l
        invstd = (var + layers[0].norm1.eps).rsqrt()
        mean_v = mean.to(vdt)

        def bn_input_grad(g, d, x, out, iv, mu, a_sum, b_sum):
            """out = g + BN backward of (shared-statistics) BNs whose gamma-weighted output grads sum to d.

            dx = g + invstd * (d - A/M - xhat * B/M), xhat = (x - mean) * invstd, written as
            g + a*d + b*x + c with per-channel a, b, c.
            """
            a = iv
            b = -iv * iv * b_sum / m
            c = -iv * a_sum / m - b * mu
            kern.lincomb(g, d, x, out, a.to(vdt), b.to(vdt), c.to(vdt))
            return out

        grads: list[Tensor | None] = []
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            c = k0 + i * k
            y1, stats2, mask1, mask2, s1, t1, w1, w2 = ctx.layer_saved[i]
            # dL/dx_{i+1}: from the block output and from the BN1 of every later layer
            g = _workspace("g", m, k, X)
            bn_input_grad(gX[:, c:c + k], D[:, c:c + k], X[:, c:c + k], g, invstd[c:c + k], mean[c:c + k],
                          A[c:c + k], B[c:c + k])
            g = _face(g, n, h, w)
            if mask2 is not None:
                g = g * mask2
            layer_grads: list[Tensor] = []
            if layer.bottleneck:
                n2 = layer.norm2
                y1r = _rows(y1)
                mean2, var2, s2, t2 = stats2
                z = _workspace("z", m, y1.shape[1], X)
                kern.affine_relu(y1r, z, s2, t2)  # recomputed BN2-ReLU
                dz2, dw2 = _conv_bwd(g, _face(z, n, h, w), w2, layer.conv2.padding)
                gamma2 = n2.weight.detach().to(vdt).contiguous()
                d2 = _workspace("D2", m, y1.shape[1], X)
                s_dy, s_dyx = kern.relu_bwd(_rows(_cl(dz2)), y1r, d2, s2, t2, mean2.to(vdt), gamma2, False)
                iv2 = (var2 + n2.eps).rsqrt()
                db2, dg2 = s_dy, s_dyx * iv2
                g = _face(_workspace("g1", m, y1.shape[1], X), n, h, w)  # dL/dy1, (N, 4k, H, W)
                bn_input_grad(None, d2, y1r, _rows(g), iv2, mean2, gamma2.double() * db2, gamma2.double() * dg2)
                layer_grads = [dg2.to(n2.weight.dtype), db2.to(n2.bias.dtype), dw2.to(layer.conv2.weight.dtype)]
            if mask1 is not None:
                g = g * mask1
            n1 = layer.norm1
            z = _workspace("z", m, c, X)
            kern.affine_relu(X[:, :c], z, s1, t1)  # recomputed BN1-ReLU
            dz1, dw1 = _conv_bwd(_cl(g), _face(z, n, h, w), w1, layer.conv1.padding)
            gamma1 = n1.weight.detach().to(vdt).contiguous()
            s_dy, s_dyx = kern.relu_bwd(_rows(_cl(dz1)), X[:, :c], D[:, :c], s1, t1, mean_v[:c], gamma1, True)
            db1, dg1 = s_dy, s_dyx * invstd[:c]
            A[:c] += gamma1.double() * db1
            B[:c] += gamma1.double() * dg1
            grads = [dg1.to(n1.weight.dtype), db1.to(n1.bias.dtype), dw1.to(layer.conv1.weight.dtype)] \
                + layer_grads + grads
        gx0 = None
        if ctx.needs_input_grad[3]:
            gx0 = _empty_cl(n, k0, h, w, X)
            bn_input_grad(gX[:, :k0], D[:, :k0], X[:, :k0], _rows(gx0), invstd[:k0], mean[:k0], A[:k0], B[:k0])
            gx0 = gx0.to(ctx.x0_dtype)
        return (None, None, None, gx0, *grads)


def _empty_cl(n: int, c: int, h: int, w: int, like: Tensor) -> Tensor:
    return torch.empty((n, c, h, w), dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------

class FastDenseBlock(_DenseBlock):
    """A `_DenseBlock` whose forward runs the fused implementation above (same parameters).

    Not constructed directly: `convert(model)` switches the class of existing blocks, so weights,
    state_dict keys, hooks and optimiser references all stay the same objects.
    """

    fast_kernels = "auto"  # "auto" (C++ on CPU, torch elsewhere), "cpp" or "torch"
    _last_stats: tuple[Tensor, Tensor] | None = None  # set by the forward pass, handed on with the output

    @property
    def growth_rate(self) -> int:
        first = next(iter(self.values()))
        return (first.conv2 if first.bottleneck else first.conv1).out_channels

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype autocast would give a convolution here (bf16 under CPU autocast), else x's."""
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
        return x.dtype

    @torch.compiler.disable  # opaque to torch.compile: the C++ kernels are not traceable ops
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"dense block expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        if not self.training:
            if torch.is_grad_enabled():
                return super().forward(x)  # eval with autograd (rare): the plain path
            return self._inference(x)
        for layer in self.values():
            bns = (layer.norm1, layer.norm2) if layer.bottleneck else (layer.norm1,)
            if any(type(bn) is not nn.BatchNorm2d for bn in bns):
                raise RuntimeError(f"fast dense blocks compute batch statistics themselves, on this process's "
                                   f"batch; {type(layer.norm1).__name__} (synchronised BN?) needs the plain block: "
                                   f"convert(model, fast=False)")
        if x.shape[0] * x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        kern = _kernels(self.fast_kernels, x.device)
        cdt = self._compute_dtype(x)
        params = []
        for layer in self.values():
            params += [layer.norm1.weight, layer.norm1.bias, layer.conv1.weight]
            if layer.bottleneck:
                params += [layer.norm2.weight, layer.norm2.bias, layer.conv2.weight]
        with torch.autocast(x.device.type, enabled=False):
            out = _FastBlockFn.apply(self, kern, cdt, x, *params)  # channels-last
        stats, self._last_stats = self._last_stats, None
        # Hand back the layout the plain block would (what follows, e.g. a transition's dropout
        # noise, depends on it); channels-last models pay nothing, NCHW ones one copy.
        if not _is_channels_last(x):
            return out.contiguous()
        out._fast_dense_stats = stats  # the batch statistics of every output channel, for a FastTransition
        return out

    @torch.no_grad()
    def _inference(self, x: Tensor) -> Tensor:
        """Eval-mode forward (running statistics), writing into one buffer instead of concatenating."""
        kern = _kernels(self.fast_kernels, x.device)
        cdt = self._compute_dtype(x)
        vdt = _vec_dtype(cdt)
        layers = list(self.values())
        n, k0, h, w = x.shape
        k = self.growth_rate
        m = n * h * w
        X = torch.empty((m, k0 + len(layers) * k), dtype=cdt, device=x.device)
        X4 = _face(X, n, h, w)
        X4[:, :k0].copy_(x)
        with torch.autocast(x.device.type, enabled=False):
            for i, layer in enumerate(layers):
                c = k0 + i * k
                n1 = layer.norm1
                s1, t1 = _scale_shift(n1, n1.running_mean, n1.running_var, vdt)
                z = _workspace("z", m, c, X)
                kern.affine_relu(X[:, :c], z, s1, t1)
                y = F.conv2d(_face(z, n, h, w), layer.conv1.weight.to(cdt), None, 1, layer.conv1.padding)
                if layer.bottleneck:
                    n2 = layer.norm2
                    s2, t2 = _scale_shift(n2, n2.running_mean, n2.running_var, vdt)
                    y1r = _rows(_cl(y))
                    z = _workspace("z", m, y1r.shape[1], X)
                    kern.affine_relu(y1r, z, s2, t2)
                    y = F.conv2d(_face(z, n, h, w), layer.conv2.weight.to(cdt), None, 1, layer.conv2.padding)
                X4[:, c:c + k].copy_(y)
        return X4 if _is_channels_last(x) else X4.contiguous()


class _SharedStatsBNReLU(torch.autograd.Function):
    """relu(BN(x)) in training mode, for an x whose batch statistics are already known (a fast
    block's output): one fused pass forward, two backward (the full BN backward, statistics included)."""

    @staticmethod
    def forward(ctx, x4: Tensor, weight: Tensor, bias: Tensor, bn: nn.BatchNorm2d, kern, mean: Tensor,
                var: Tensor) -> Tensor:
        n, c, h, w = x4.shape
        m = n * h * w
        vdt = _vec_dtype(x4.dtype)
        _update_running(bn, mean, var, m)
        s, t = _scale_shift(bn, mean, var, vdt)
        z = _empty_cl(n, c, h, w, x4)
        kern.affine_relu(_rows(x4), _rows(z), s, t)
        ctx.save_for_backward(x4)
        ctx.bn, ctx.kern, ctx.stats = bn, kern, (mean, var, s, t)
        return z

    @staticmethod
    def backward(ctx, gz: Tensor):
        (x4,) = ctx.saved_tensors
        mean, var, s, t = ctx.stats
        n, c, h, w = x4.shape
        m = n * h * w
        vdt = _vec_dtype(x4.dtype)
        xr = _rows(x4)
        gamma = ctx.bn.weight.detach().to(vdt).contiguous()
        d = _workspace("DT", m, c, x4)
        s_dy, s_dyx = ctx.kern.relu_bwd(_rows(_cl(gz.to(x4.dtype))), xr, d, s, t, mean.to(vdt), gamma, False)
        iv = (var + ctx.bn.eps).rsqrt()
        db, dg = s_dy, s_dyx * iv
        a = iv
        b = -iv * iv * (gamma.double() * dg) / m
        cc = -iv * (gamma.double() * db) / m - b * mean
        gx = _empty_cl(n, c, h, w, x4)
        ctx.kern.lincomb(None, d, xr, _rows(gx), a.to(vdt), b.to(vdt), cc.to(vdt))
        return gx, dg.to(ctx.bn.weight.dtype), db.to(ctx.bn.bias.dtype), None, None, None, None


class FastTransition(_Transition):
    """A `_Transition` that takes its BatchNorm's batch statistics from the fast block before it.

    The statistics of the block's output channels were computed once inside the block; here BN-ReLU
    becomes one fused pass. Same parameters; any input that does not carry those statistics (not a
    fast block's output, eval mode) takes the plain path.
    """

    fast_kernels = "auto"

    @torch.compiler.disable
    def forward(self, x: Tensor) -> Tensor:
        stats = getattr(x, "_fast_dense_stats", None)
        if stats is None or not self.training or type(self.norm) is not nn.BatchNorm2d:
            return super().forward(x)
        kern = _kernels(self.fast_kernels, x.device)
        with torch.autocast(x.device.type, enabled=False):
            out = _SharedStatsBNReLU.apply(x, self.norm.weight, self.norm.bias, self.norm, kern, *stats)
        for name, module in self.named_children():  # conv, [dropout], pool, as in the Sequential
            if name not in ("norm", "relu"):
                out = module(out)
        return out


def convert(model: nn.Module, fast: bool = True, kernels: str = "auto") -> nn.Module:
    """Switch every dense block of `model` to the fast forward (fast=True) or back, in place.

    Returns the model. Parameters, buffers and state_dict keys are untouched; the plain and the fast
    block compute the same function (tests/test_fast_dense.py), so checkpoints load either way.
    With kernels="auto" on a CPU model where the C++ kernels cannot be built (no compiler), the
    model keeps its plain blocks and one warning says so (fast_dense_cpu.fast_kernels_available);
    check with `is_fast(model)`.
    """
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}: use one of {', '.join(KERNELS)}")
    if fast and kernels == "auto" and all(p.device.type == "cpu" for p in model.parameters()):
        from densenet_repro.models.fast_dense_cpu import fast_kernels_available

        if any(isinstance(m, _DenseBlock) for m in model.modules()) and not fast_kernels_available():
            return model
    found = 0
    for module in model.modules():
        if isinstance(module, _DenseBlock):
            found += 1
            if fast:
                _check_convertible(module)
                module.__class__ = FastDenseBlock
                module.fast_kernels = kernels
            elif isinstance(module, FastDenseBlock):
                module.__class__ = _DenseBlock
                module.__dict__.pop("fast_kernels", None)
            module.__dict__.pop("_last_stats", None)
        elif isinstance(module, _Transition):
            if fast:
                module.__class__ = FastTransition
                module.fast_kernels = kernels
            elif isinstance(module, FastTransition):
                module.__class__ = _Transition
                module.__dict__.pop("fast_kernels", None)
    if found == 0:
        raise ValueError(f"{type(model).__name__} has no dense blocks to convert (is it a DenseNet?)")
    return model


def is_fast(model: nn.Module) -> bool:
    """True when every dense block of `model` runs the fast forward."""
    blocks = [m for m in model.modules() if isinstance(m, _DenseBlock)]
    return bool(blocks) and all(isinstance(b, FastDenseBlock) for b in blocks)


def _check_convertible(block: _DenseBlock) -> None:
    layers = list(block.values())
    eps = {layer.norm1.eps for layer in layers}
    for layer in layers:
        bns = [layer.norm1] + ([layer.norm2] if layer.bottleneck else [])
        if any(not (bn.affine and bn.track_running_stats) for bn in bns):
            raise ValueError("the fast dense block needs affine BatchNorms with running statistics")
    if len(eps) != 1:
        raise ValueError(f"the fast dense block shares batch statistics, so all norm1 eps must be equal, got {eps}")

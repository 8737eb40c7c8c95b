"""Weights rounded to the grid ONNX Runtime will store them on, for measuring and for training.

Three users: the quantization sensitivity analysis (one matrix rounded at a time, to see what it costs),
quantization-aware distillation (every matrix the artifact will store in int4 rounded in the forward pass,
gradients passed straight through, so training can move the weights to where rounding costs least), and the
export's GPTQ (``gptq_round``: the levels chosen for the layer's output, on the same grid). All three
must round exactly as the export does, or the analysis measures a different model and the training optimises
for a grid the artifact does not use. The rules, checked against ONNX Runtime in the tests:

- int4 (``MatMulNBits``, ``GatherBlockQuantized``, symmetric): blocks of ``block_size`` input features per
  output row (per table row for an embedding table); the block's value of largest magnitude, with its sign,
  is level -8, so the levels are ``scale * [-8 .. 7]`` with ``scale = that value / -8``.
- int8 (dynamic per-channel weights): one scale per output row, ``max |w| / 127``, levels ``-127 .. 127``.
- int8 activations (``DynamicQuantizeLinear``, computed at run time): one uint8 scale and zero point for the
  whole input tensor of each matrix product, ``(max(x, 0) - min(x, 0)) / 255``, the zero point ``round(-min /
  scale)``. One scale for the tensor: a request served in a batch is rounded with its neighbours' range.

A model whose weights were trained on the int4 grid and frozen there (``freeze``) is re-quantised by ONNX
Runtime to the very same values: the largest value of each block sits on level -8 and keeps its scale.
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from axformer.errors import AxformerError
from axformer.surgery.adapters import get_adapter
from axformer.surgery.prune import current_structure


def check_block_size(size: int | None, option: str) -> None:
    """An int4 block size ONNX Runtime's 4-bit kernels take: a power of two of at least 16 (None: not used)."""
    if size is not None and (size < 16 or size & (size - 1)):
        raise AxformerError(f"{option} {size}; expected an int4 block size, a power of two of at least 16")


def _peak_scale(blocks: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each block's (last axis) int4 scale as ONNX Runtime derives it, and where its peak sits: the value of largest
    magnitude, with its sign, is level -``levels`` (a block of zeros gets a tiny scale, so it rounds to zeros)."""
    at = blocks.abs().argmax(-1, keepdim=True)
    scale = blocks.gather(-1, at) / -levels
    return torch.where(scale.abs() < 1e-12, torch.full_like(scale, 1e-12), scale), at


def fake_quantize(weight: torch.Tensor, bits: int, block_size: int | None = None) -> torch.Tensor:
    """``weight`` ([out, in], or [rows, hidden] for a table) rounded to the export's grid and back."""
    w = weight.float()
    out_f, in_f = w.shape
    if block_size:
        levels = 2 ** (bits - 1)
        pad = (-in_f) % block_size
        wp = torch.nn.functional.pad(w, (0, pad)).reshape(out_f, -1, block_size)
        scale, _ = _peak_scale(wp, levels)
        q = torch.clamp(torch.round(wp / scale), -levels, levels - 1) * scale
        return q.reshape(out_f, -1)[:, :in_f].to(weight.dtype)
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(1).clamp_min(1e-12) / qmax).float()
    zero = torch.zeros(out_f, dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax).to(weight.dtype)


def fake_quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as ONNX Runtime's dynamic int8 rounds a matrix product's input (one uint8 scale for the whole
    tensor, its range stretched to take in 0), gradients passed straight through."""
    xf = x.float()
    lo, hi = xf.detach().amin().clamp(max=0), xf.detach().amax().clamp(min=0)
    scale = ((hi - lo) / 255).clamp_min(1e-12).reshape(1)
    zero = torch.round(-lo / scale).clamp(0, 255).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(xf, scale, zero, 0, 255).to(x.dtype)


def _round_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (fake_quantize_activation(args[0]), *args[1:])


def embedding_tables(model) -> dict[str, str]:
    """axformer's names for the embedding lookup tables (``embeddings.word``, ``.position``, ``.token_type``) ->
    their module paths: matrices a precision plan can quantise like any other."""
    paths = {id(m): n for n, m in model.named_modules()}
    out = {}
    word = model.get_input_embeddings()
    if isinstance(word, torch.nn.Embedding):
        out["embeddings.word"] = paths[id(word)]
    block = getattr(getattr(model, "base_model", model), "embeddings", None)
    for attr, name in (
        ("position_embeddings", "embeddings.position"),
        ("token_type_embeddings", "embeddings.token_type"),
    ):
        table = getattr(block, attr, None)
        if isinstance(table, torch.nn.Embedding):
            out[name] = paths[id(table)]
    return out


# Tables whose rows every input adds (the token type of each token, the position of each token): their rounding
# error shifts every token alike, where a word row's error reaches only the texts that use the word; and they are
# small (2 and 128-512 rows). Measured on SST-2's held-out sentences (the deciding part, 1,326; each table alone
# in int4 blocks of 128, all else fp32; benchmarks/experiments/int4_mrpc/table_sensitivity.py): the token-type
# table changed 31 answers (logit MSE 0.054), the whole word table 9 (0.005), the position table 5 (0.002). The
# size preset's artifact with these two in int8 instead: 1.96% answers changed instead of 3.62%, for 50 KB.
EVERY_TOKEN_TABLES = ("embeddings.position", "embeddings.token_type")


def table_format(name: str | None, asked: str) -> str:
    """The format a table named ``name`` is stored in when the tables are asked to be ``asked`` (int4 or int4/B:
    the word table only, the tables every token adds int8)."""
    return "int8" if asked.startswith("int4") and name in EVERY_TOKEN_TABLES else asked


def head_matrices(model) -> dict[str, str]:
    """The weight matrices outside the encoder's layers, but for the output projection (a pooler, a classification
    head's dense layer): ``head.<module path>`` -> module path. A pooler is as large as an attention matrix; a
    precision plan rounds it like one, by its own measured sensitivity."""
    adapter = get_adapter(model)
    encoder = {id(m) for _, _, m in adapter.named_linears(model, current_structure(model).present_layers)}
    outputs = getattr(model.config, "num_labels", None)
    return {
        f"head.{path}": path
        for path, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and id(m) not in encoder and m.out_features != outputs
    }


class _RoundedWeight(torch.nn.Module):
    """A parametrization: the forward pass sees the rounded weight, the gradient reaches the latent one unchanged
    (the straight-through estimator)."""

    def __init__(self, bits: int, block_size: int | None):
        super().__init__()
        self.bits, self.block_size = bits, block_size

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rounded = fake_quantize(w.detach(), self.bits, self.block_size)
        return w + (rounded - w.detach())


def quantization_aware(
    model: torch.nn.Module,
    bits: int = 4,
    block_size: int | None = 32,
    table_block_size: int | None = None,
    attention_inputs: bool = True,
) -> list[str]:
    """Round the encoder's matrices (blocks of ``block_size``; None: not them; Q/K/V only with
    ``attention_inputs``) and the embedding tables (blocks of ``table_block_size``; None: not them) in every forward
    pass from now on; returns the module paths. The state dict then holds the latent weights under
    ``parametrizations``: a model in this state is trained and checkpointed, and ``freeze`` ends it."""
    structure = current_structure(model)
    paths = {id(m): n for n, m in model.named_modules()}
    targets = []
    if block_size:
        targets = [
            (paths[id(linear)], block_size)
            for _, name, linear in get_adapter(model).named_linears(model, structure.present_layers)
            if attention_inputs or not name.endswith((".attn.q", ".attn.k", ".attn.v", ".attn.qkv"))
        ]
    if table_block_size:  # the tables the artifact stores in int4 (the others go to int8: not rounded here)
        targets += [
            (path, table_block_size)
            for name, path in embedding_tables(model).items()
            if table_format(name, "int4") == "int4"
        ]
    for path, block in targets:
        module = model.get_submodule(path)
        if not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", _RoundedWeight(bits, block))
    return [p for p, _ in targets]


def int8_aware(model: torch.nn.Module) -> list[str]:
    """Round every matrix product ONNX Runtime's dynamic int8 export quantizes (each ``nn.Linear``: the encoder's,
    the pooler's and the classifier's), weights per output row and inputs per tensor, in every forward pass from
    now on; returns the module paths. Matrices an export then keeps in fp32 (``--exclude-node``, a mixed plan) were
    trained rounded all the same; on a CPU without VNNI the export stores 7-bit weights (``reduce_range``), a
    little coarser than the 8-bit grid trained on here; the inputs are rounded alike on every CPU.

    Why the inputs too: each weight row gets its own scale, while one uint8 scale for a whole activation tensor
    rounds the small values of every token to the range of the largest, and with the batch's range. Trained
    through that rounding (MRPC, docs/promises.md session 29), int8 changed 0.79% of the model's training answers
    instead of 1.15%, and its dev F1 moved 0.19 points over batch sizes 1-64 instead of 0.78. ``freeze`` ends
    it."""
    targets = [
        (path, m) for path, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not hasattr(m, _INPUT_HOOK)
    ]
    for _, module in targets:
        if not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", _RoundedWeight(8, None))
        setattr(module, _INPUT_HOOK, module.register_forward_pre_hook(_round_input))
    return [p for p, _ in targets]


_INPUT_HOOK = "_axformer_int8_input"


def freeze(model: torch.nn.Module) -> None:
    """End quantization-aware training: each rounded weight becomes the plain weight, on the grid, and inputs are
    no longer rounded (a no-op for a model that was never made quantization-aware)."""
    for module in list(model.modules()):
        if hasattr(module, _INPUT_HOOK):
            getattr(module, _INPUT_HOOK).remove()
            delattr(module, _INPUT_HOOK)
        if parametrize.is_parametrized(module, "weight") and isinstance(
            module.parametrizations["weight"][0], _RoundedWeight
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


@torch.no_grad()
def gptq_round(
    weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, block_size: int = 32, damping: float = 0.01
) -> torch.Tensor:
    """``weight`` ([out, in]) rounded to the export's int4 grid by GPTQ (Frantar et al., 2023) instead of to the
    nearest level: input features are rounded one at a time and each rounding error is spread over the features
    not yet rounded, weighted by ``hessian`` (``X^T X`` of the layer's inputs, [in, in]), so the layer's *output*
    on inputs like those moves least, not each weight.

    The result lies on ONNX Runtime's own grid, so its RTN quantizer stores exactly these values: each block's
    scale is fixed from its value of largest magnitude when the block starts, and that element is put on level
    -8 whatever the error updates did to it (the peak then still decides the scale when ONNX Runtime re-reads
    the block). ONNX Runtime's own GPTQ (from Neural Compressor) re-quantizes its result with a different scale
    rule, which rounds a second time: that is why this exists."""
    w = weight.detach().double().clone()
    out_f, in_f = w.shape
    levels = 2 ** (bits - 1)
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * torch.diag(h).mean() * torch.eye(in_f, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    lazy = max(block_size, 128 // block_size * block_size)  # whole blocks per lazy update
    for i1 in range(0, in_f, lazy):
        i2 = min(i1 + lazy, in_f)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1, dtype=w.dtype), hinv[i1:i2, i1:i2]
        scale = peak_col = None
        for i in range(i2 - i1):
            if (i1 + i) % block_size == 0:
                scale, at = _peak_scale(w1[:, i : i + block_size], levels)
                scale, peak_col = scale[:, 0], at[:, 0] + i
            col = w1[:, i]
            qc = torch.clamp(torch.round(col / scale), -levels, levels - 1)
            qc = torch.where(peak_col == i, torch.full_like(qc, -levels), qc) * scale
            q[:, i1 + i] = qc
            e = (col - qc) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return fake_quantize(q.to(weight.dtype), bits, block_size)  # the same levels, scales as fp32 computes them

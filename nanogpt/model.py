"""A GPT language model with nanoGPT's math and parameter names.

A state_dict saved by nanoGPT's model.py loads here with strict=True and gives the same
logits: the module tree (transformer.wte, transformer.h.N.attn.c_attn, lm_head, ...) and
the initialisation follow nanoGPT exactly. What is added: config checks, FLOPs per token,
per-head attention maps for teaching, and today's options (rotary positions, RMSNorm, ReLU^2 or SwiGLU
MLPs, QK-norm, an untied lm_head, logit soft-capping, zero-init output projections) and the maximal update
parametrization (muP), each off by default: a default GPTConfig is nanoGPT's model.

muP (parametrization "mup"; Yang et al. 2022, "Tensor Programs V", as EleutherAI's nanoGPT-mup does it for a
nanoGPT) makes the best learning rate hold as n_embd grows, with width_mult = n_embd / mup_base_width:
- attention logits scaled by 1/head_dim, not 1/sqrt(head_dim): here sqrt(base_head_dim) / head_dim, with
  base_head_dim = mup_base_width / n_head, so that at the base width muP is nanoGPT's model (nanoGPT-mup's plain
  1/head_dim differs from SP at every width);
- the input of lm_head multiplied by 1/width_mult (nanoGPT-mup's output multiplier; there only with targets,
  here in sampling too, so generation sees the logits training did);
- the blocks' matrices (c_attn, c_fc, c_proj) initialised with std / sqrt(width_mult). c_proj keeps GPT-2's
  1/sqrt(2 n_layer) (a depth factor, not a width one; nanoGPT-mup drops it), again so the base width is SP;
- their learning rate divided by width_mult, and AdamW's eps too (nanogpt.train.configure_optimizer).
Embeddings, norms, biases and lm_head keep their init and learning rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt.errors import UserError


POS_EMBS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")
PARAMETRIZATIONS = ("sp", "mup")
NORM_EPS = 1e-6  # RMSNorm's epsilon (ln_*, qk_norm), Llama's and Qwen3's


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU's hidden width: 8/3 n_embd (three matrices with the parameters of the 4 n_embd MLP's two),
    rounded up to a multiple of 8."""
    return -(-int(8 * n_embd / 3) // 8) * 8


@dataclass
class GPTConfig:
    """Shape of the network. Field names are nanoGPT's; the options after bias default to nanoGPT's model."""

    block_size: int = 1024  # longest context, in tokens
    vocab_size: int = 50304  # tokens the model knows (the tokenizer's)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # must be a multiple of n_head; head size = n_embd // n_head
    dropout: float = 0.0  # dropout probability (attention, residual and embedding dropout, as nanoGPT)
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2
    # positions: learned = nanoGPT's wpe table; rope = rotary embeddings on q and k (no wpe), Llama's rotate-half form
    pos_emb: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0  # rope: the base of the rotary frequencies
    # layernorm = nanoGPT's (a weight, and a bias with bias); rmsnorm = parameter-free RMSNorm, for ln_1, ln_2, ln_f
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    # the MLP: gelu = nanoGPT's; relu2 = ReLU squared (4 n_embd hidden); swiglu = SiLU-gated, 8/3 n_embd hidden
    mlp: Literal["gelu", "relu2", "swiglu"] = "gelu"
    qk_norm: bool = False  # parameter-free RMSNorm of each head's q and k (before rope), as Qwen3
    tie_embeddings: bool = True  # lm_head shares wte's weight (nanoGPT); false: lm_head has its own
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap) (Gemma 2); 0 = off
    # output projections (every c_proj, and an untied lm_head) start at zero, as modded-nanogpt and nanochat
    zero_init: bool = False
    # sp = standard, nanoGPT's; mup = maximal update parametrization: the best learning rate holds across widths
    parametrization: Literal["sp", "mup"] = "sp"
    mup_base_width: int = 128  # mup: the n_embd at which mup is sp (same init, logits and learning rates)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "mup_base_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, self.n_embd // self.n_head)}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, choices in (("pos_emb", POS_EMBS), ("norm", NORMS), ("mlp", MLPS),
                              ("parametrization", PARAMETRIZATIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        for name in ("bias", "qk_norm", "tie_embeddings", "zero_init"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("rope_theta", "logit_softcap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap must be >= 0 (0 = off), got {self.logit_softcap}")
        head_size = self.n_embd // self.n_head
        if self.pos_emb == "rope" and head_size % 2:
            raise ValueError(f"rope rotates pairs of channels: the head size n_embd // n_head ({head_size}) must be "
                             f"even; try n_embd={self.n_head * (head_size + 1)}, or pos_emb learned")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def width_mult(self) -> float:
        """muP's width multiplier n_embd / mup_base_width; 1 under sp."""
        return self.n_embd / self.mup_base_width if self.parametrization == "mup" else 1.0

    @property
    def attn_scale(self) -> float:
        """What q.k is multiplied by: 1/sqrt(head_dim) (sp), sqrt(base_head_dim)/head_dim (mup, see the module doc)."""
        hs = self.n_embd // self.n_head
        if self.parametrization == "sp":
            return 1.0 / math.sqrt(hs)
        return math.sqrt(self.mup_base_width / self.n_head) / hs

    def architecture(self) -> str:
        """The options in words, e.g. 'rope, rmsnorm, relu2 MLP, qk_norm, untied lm_head, zero init'."""
        parts = ["learned positions" if self.pos_emb == "learned" else
                 "rope" + (f" (theta {self.rope_theta:g})" if self.rope_theta != 10000.0 else ""),
                 self.norm, f"{self.mlp} MLP"]
        parts += ["qk_norm"] * self.qk_norm + ["tied lm_head" if self.tie_embeddings else "untied lm_head"]
        parts += [f"logit softcap {self.logit_softcap:g}"] * (self.logit_softcap > 0) + ["zero init"] * self.zero_init
        parts += [f"muP (base width {self.mup_base_width})"] * (self.parametrization == "mup")
        return ", ".join(parts)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """RMSNorm without parameters: x / rms(x) over the last dim."""

    def __init__(self, ndim: int):
        super().__init__()
        self.ndim = ndim

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(input, (self.ndim,), eps=NORM_EPS)


def make_norm(config: GPTConfig) -> nn.Module:
    return LayerNorm(config.n_embd, bias=config.bias) if config.norm == "layernorm" else RMSNorm(config.n_embd)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (Hugging Face's Llama and Qwen3)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, nh, T, hs) by the angles of cos, sin (T, hs)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class Rotary(nn.Module):
    """cos and sin of the rotary angles for the first t positions, in float32 as Hugging Face computes them."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hs = config.n_embd // config.n_head
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.int64).float() / hs))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # derived: not in the state_dict

    def forward(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(t, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.float())  # (t, hs / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (t, hs): each angle on both halves, as rotate_half pairs them
        return emb.cos(), emb.sin()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        # key, query, value projections for all heads, in one batch
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        # sp: None, SDPA's own 1/sqrt(head_dim), so nanoGPT's model calls exactly what nanoGPT calls
        self.scale = config.attn_scale if config.parametrization == "mup" else None

    def _qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm:  # per head, before the rotation (Qwen3's order)
            q, k = F.rms_norm(q, (hs,), eps=NORM_EPS), F.rms_norm(k, (hs,), eps=NORM_EPS)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self._qkv(x, rope)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0.0, is_causal=True,
            scale=self.scale)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))

    def attention_weights(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Softmax attention probabilities (B, nh, T, T), computed explicitly for inspection."""
        T = x.size(1)
        q, k, _ = self._qkv(x, rope)
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(k.size(-1))
        att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
        return F.softmax(att, dim=-1)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        C = config.n_embd
        hidden = swiglu_hidden(C) if self.kind == "swiglu" else 4 * C
        # swiglu: one matrix gives gate and up side by side (c_fc keeps nanoGPT's name)
        self.c_fc = nn.Linear(C, 2 * hidden if self.kind == "swiglu" else hidden, bias=config.bias)
        if self.kind == "gelu":
            self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = self.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(
            dict(
                **modules,
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=make_norm(config),
            )
        )
        self.rotary = Rotary(config) if config.pos_emb == "rope" else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying: the output projection is the token embedding (saves vocab*n_embd params)
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: the residual stream sums 2*n_layer of them
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.parametrization == "mup":  # the blocks' matrices: variance / width_mult (module doc)
            with torch.no_grad():
                for p in hidden_matrices(self):
                    p.mul_(1.0 / math.sqrt(config.width_mult))
        if config.zero_init:  # every block starts as the identity, and an untied lm_head predicts uniformly
            for pn, p in self.named_parameters():
                if pn.endswith("c_proj.weight") or (pn == "lm_head.weight" and not config.tie_embeddings):
                    torch.nn.init.zeros_(p)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. Embedding lookups are left out by default, as in nanoGPT: the position table,
        and the token table unless it is tied to lm_head (then it is a matmul too)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n_params -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n_params -= self.transformer.wte.weight.numel()
        return n_params

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM appendix B as in nanoGPT."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * self.get_num_params() + 12 * L * H * Q * T

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} is longer than block_size {self.config.block_size}")
        x, rope = self._embed(idx)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope)
        x = self.transformer.ln_f(x)
        if self.config.parametrization == "mup":
            x = x * (1.0 / self.config.width_mult)  # muP's output multiplier, on lm_head's input as nanoGPT-mup

        if targets is not None:
            logits = self._softcap(self.lm_head(x))  # (b, t, vocab_size)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            # inference-time mini-optimization: only forward the lm_head on the very last position
            logits = self._softcap(self.lm_head(x[:, [-1], :]))  # (b, 1, vocab_size); list index keeps the time dim
            loss = None
        return logits, loss

    def _embed(self, idx: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token (plus learned position) embeddings of idx (b, t), and rope's (cos, sin) or None."""
        t = idx.size(1)
        tok_emb = self.transformer.wte(idx)  # (b, t, n_embd)
        if self.rotary is not None:
            return tok_emb, self.rotary(t)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)  # (t)
        pos_emb = self.transformer.wpe(pos)  # (t, n_embd)
        return tok_emb + pos_emb, None

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend idx (b, t) by max_new_tokens tokens.

        temperature == 0 means greedy decoding (argmax); temperature < 0 is an error.
        Call model.eval() first unless dropout is wanted during sampling.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        for _ in range(max_new_tokens):
            # crop the context to the last block_size tokens
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :]  # (b, vocab_size)
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of every layer and head for idx (1, t): (n_layer, n_head, t, t).

        Row i says how much position i attends to each earlier position j <= i.
        """
        if idx.dim() != 2 or idx.size(0) != 1:
            raise ValueError("attention_maps takes one sequence of shape (1, t)")
        t = idx.size(1)
        if t > self.config.block_size:
            idx = idx[:, -self.config.block_size :]
            t = self.config.block_size
        was_training = self.training
        self.eval()
        x, rope = self._embed(idx)
        maps = []
        for block in self.transformer.h:
            maps.append(block.attn.attention_weights(block.ln_1(x), rope)[0])  # (nh, t, t)
            x = block(x, rope)
        self.train(was_training)
        return torch.stack(maps)  # (n_layer, nh, t, t)


def hidden_matrices(model: GPT) -> list[nn.Parameter]:
    """The 2-D weights inside the blocks: muP's hidden matrices, and what Muon takes."""
    return [p for p in model.transformer.h.parameters() if p.dim() == 2]


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("device 'mps' was asked for but this torch sees no Apple GPU (MPS); use --device cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)

"""CSM: a Llama backbone over 33-column positions and a depth decoder over the 32 codebooks.

Names follow Sesame's original modules (``text_embeddings``, ``audio_embeddings``, ``projection``,
``codebook0_head``, ``audio_head``); the checkpoint loader maps both published namings onto them.
"""

from __future__ import annotations

import torch
from torch import nn

from csm_service.config import CsmConfig
from csm_service.model.llama import Transformer


class CSM(nn.Module):
    def __init__(self, cfg: CsmConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, dec_dim = cfg.backbone.dim, cfg.decoder.dim
        self.text_embeddings = nn.Embedding(cfg.text_vocab_size, dim)
        self.audio_embeddings = nn.Embedding(cfg.audio_vocab_size * cfg.num_codebooks, dim)
        self.backbone = Transformer(cfg.backbone, cfg.max_seq_len)
        # The depth decoder sees [backbone hidden, code 0, ..., code 30]: 32 positions.
        self.decoder = Transformer(cfg.decoder, cfg.num_codebooks)
        self.projection = nn.Linear(dim, dec_dim, bias=False)
        self.codebook0_head = nn.Linear(dim, cfg.audio_vocab_size, bias=False)
        self.audio_head = nn.Parameter(torch.empty(cfg.num_codebooks - 1, dec_dim, cfg.audio_vocab_size))
        self.packed_heads: nn.Module | None = None  # audio_head prepacked per codebook, see fuse_projections()
        self.register_buffer("codebook_offsets", torch.empty(cfg.num_codebooks, dtype=torch.int64), persistent=False)
        self.init_buffers()

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Compute the non-persistent buffers (also after building on the meta device)."""
        device = device if device is not None else self.codebook_offsets.device
        if torch.device(device).type == "meta":
            return
        self.codebook_offsets = torch.arange(self.cfg.num_codebooks, device=device) * self.cfg.audio_vocab_size  # [K]
        self.backbone.init_buffers(device)
        self.decoder.init_buffers(device)

    def setup_caches(self, max_batch: int) -> None:
        """Allocate static KV caches for ``max_batch`` slots in the model's dtype and device."""
        dtype, device = self.text_embeddings.weight.dtype, self.text_embeddings.weight.device
        self.backbone.setup_caches(max_batch, dtype, device)
        self.decoder.setup_caches(max_batch, dtype, device)

    def embed_rows(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens, mask [B, S, 33] (32 codebooks + text) -> masked sum of embeddings [B, S, D]."""
        k = self.cfg.num_codebooks
        audio = self.audio_embeddings(tokens[..., :k] + self.codebook_offsets)  # [B, S, K, D]
        text = self.text_embeddings(tokens[..., k:])  # [B, S, 1, D]
        embeds = torch.cat([audio, text], dim=2) * mask.unsqueeze(-1).to(audio.dtype)
        return embeds.sum(dim=2)

    def embed_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K] of one generated frame -> backbone input [B, 1, D]."""
        return self.audio_embeddings(codes + self.codebook_offsets).sum(dim=1, keepdim=True)

    def embed_code(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        """codes [B] of one codebook -> [B, D] audio embedding."""
        return self.audio_embeddings(codes + codebook * self.cfg.audio_vocab_size)

    def codebook0_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """backbone hidden [B, D] -> codebook-0 logits [B, V] in float32."""
        return self.codebook0_head(hidden).float()

    def codebook_logits(self, codebook: int, decoder_hidden: torch.Tensor) -> torch.Tensor:
        """decoder hidden [B, d] after codebook-1 input -> logits [B, V] of ``codebook`` (1..31)."""
        if self.packed_heads is not None:
            return self.packed_heads(codebook, decoder_hidden).float()
        return torch.mm(decoder_hidden, self.audio_head[codebook - 1]).float()

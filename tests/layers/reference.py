"""Plain per-image, per-pair re-statements of LCCo eq. (1)-(8), for checking the vectorised layers.

Written straight from the paper with explicit loops and an explicit softmax attention (no
scaled_dot_product_attention, no einops), reading the weights of the module under test.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention(q_lin, kv_lin, out_lin, heads: int, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of ``query`` (Lq, D) over ``context`` (Lk, D) with the module's projections."""
    d = query.shape[-1]
    e = d // heads
    q = q_lin(query)
    kv = kv_lin(context)
    k, v = kv[:, :d], kv[:, d:]
    outs = []
    for g in range(heads):
        qg, kg, vg = q[:, g * e : (g + 1) * e], k[:, g * e : (g + 1) * e], v[:, g * e : (g + 1) * e]
        weights = torch.softmax(qg @ kg.T / math.sqrt(e), dim=-1)
        outs.append(weights @ vg)
    return out_lin(torch.cat(outs, dim=-1))


def tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> (h*w, C), row-major over h then w."""
    c = fmap.shape[0]
    return fmap.reshape(c, -1).T


def isfc_reference(module, features: torch.Tensor, valid: list[bool] | None = None) -> torch.Tensor:
    """Eq. (1)-(2) for one set ``(N, C, h, w)``, pair by pair."""
    n, c, h, w = features.shape
    valid = valid if valid is not None else [True] * n
    out = []
    for i in range(n):
        if not valid[i]:
            out.append(features[i])
            continue
        partners = [j for j in range(n) if j != i and valid[j]] or [i]  # self-loop when alone
        updated = []
        for j in partners:
            msg = attention(
                module.to_q, module.to_kv, module.to_out, module.heads, tokens(features[i]), tokens(features[j])
            )
            msg = msg.T.reshape(c, h, w)
            pair = torch.cat([features[i], msg], dim=0)[None]
            updated.append(features[i] + module.ffn(pair)[0])  # eq. (1)
        stacked = torch.stack(updated)
        alpha = torch.softmax(stacked / module.temperature, dim=0)  # over the partners j
        fused = module.conv((alpha * stacked).sum(dim=0)[None])[0]  # eq. (2)
        out.append(features[i] + fused if module.residual else fused)
    return torch.stack(out)


def interaction_reference(module, features, image_emb, text, valid=None):
    """Eq. (3)-(5) for one set: features (N, C, h, w), image_emb (N, D), text (P, D)."""
    n = features.shape[0]
    valid = valid if valid is not None else [True] * n
    idx = [i for i in range(n) if valid[i]]
    s = torch.zeros(n, text.shape[0])
    for i in range(n):
        for p in range(text.shape[0]):
            s[i, p] = F.cosine_similarity(image_emb[i], text[p], dim=0)
    sigma = sum(s[i] for i in idx)
    topk = torch.sort(sigma, descending=True).indices[: module.top_k]
    mean = sum(image_emb[i] for i in idx) / len(idx)
    fused = torch.stack([module.mlp1(torch.cat([image_emb[i], mean])) for i in range(n)])  # eq. (3)
    context = torch.cat([fused[idx], text[topk]])  # STK over valid images and top-K texts
    feats, zs = [], []
    for i in range(n):
        msg = attention(module.to_q, module.to_kv, module.to_out, module.heads, fused[i][None], context)[0]
        z = fused[i] + module.mlp2(msg)  # eq. (4)
        zs.append(z)
        gate = z / z.square().mean().sqrt() if module.unit_scale else z
        f = module.ffn3(module.ffn2(features[i][None]) * gate[None, :, None, None])[0]  # eq. (5)
        feats.append(features[i] + f if module.residual else f)
    return torch.stack(feats), fused, torch.stack(zs), s, topk


def regularization_reference(module, features, similarity, text, valid=None):
    """Eq. (6)-(8) for one set: features (N, C, h, w), similarity (N, P), text (P, D)."""
    n = features.shape[0]
    valid = valid if valid is not None else [True] * n
    rows = []
    for i in range(n):
        if valid[i]:
            s = similarity[i]
            standardised = (s - s.mean()) / torch.sqrt(s.var(unbiased=False) + 1e-5)
            rows.append(module.mlp3(s) + module.class_prior * standardised)
    stacked = torch.stack(rows)
    pooled = stacked.max(dim=0).values if module.class_pool == "max" else stacked.mean(dim=0)  # over the set
    v = torch.softmax(pooled, dim=0)  # eq. (7)
    best = int(torch.argmax(v))  # eq. (6)
    t = text[best] / text[best].square().mean().sqrt() if module.unit_scale else text[best]
    feats = []
    for i in range(n):
        f = module.ffn5(module.ffn4(features[i][None]) * t[None, :, None, None])[0]  # eq. (8)
        feats.append(features[i] + f if module.residual else f)
    return torch.stack(feats), v, best


def grouping_reference(module, features: torch.Tensor, valid: list[bool] | None = None, hard: bool = False):
    """SetGrouping for one set ``(N, C, h, w)``: the valid images' tokens gathered in a loop.

    ``hard`` replaces the softmax assignment by the one-hot of its argmax (the training-mode
    forward value without noise). Returns (features, assignment, embeddings, coverage, scores, distortion).
    """
    n, c, h, w = features.shape
    valid = valid if valid is not None else [True] * n
    heads = module.heads
    e = c // heads
    x = torch.cat([tokens(features[i]) for i in range(n) if valid[i]])  # (L, C), image by image
    q = module.centres
    for block in module.blocks:
        context = block.norm_kv(torch.cat([q, x]))
        queries = block.norm_q(q)
        wq, wkv = block.to_q, block.to_kv
        qq, kv = wq(queries), wkv(context)
        k, v = kv[:, :c], kv[:, c:]
        outs = []
        for a in range(heads):
            sl = slice(a * e, (a + 1) * e)
            weights = torch.softmax(qq[:, sl] @ k[:, sl].T / math.sqrt(e), dim=-1)
            outs.append(weights @ v[:, sl])
        q = q + block.to_out(torch.cat(outs, dim=-1))
        q = q + block.mlp(block.norm_mlp(q))
    q = module.norm_centres(q)
    normed = module.norm_tokens(x)
    k = torch.empty_like(normed)
    v = torch.empty_like(normed)
    for a in range(heads):  # grouped 1x1 convolutions: group a maps channels sl to channels sl
        sl = slice(a * e, (a + 1) * e)
        k[:, sl] = normed[:, sl] @ module.to_k.weight[sl, :, 0].T
        v[:, sl] = normed[:, sl] @ module.to_v.weight[sl, :, 0].T
    k = module.norm_k(k)
    logits = q @ k.T  # (G, L)
    assign = torch.softmax(logits, dim=0)
    if hard:
        assign = F.one_hot(assign.argmax(dim=0), q.shape[0]).T.to(assign.dtype)
    pooled = (assign @ v) / assign.sum(dim=1, keepdim=True).clamp_min(1.0)
    emb = module.embed(q + pooled)
    per_image = assign.reshape(q.shape[0], -1, h * w)  # (G, valid images, h*w)
    coverage = per_image.amax(dim=2).mean(dim=1)
    back = assign.T @ emb
    back_cov = assign.T @ coverage[:, None]
    y = x + module.to_out(torch.cat([back, back_cov], dim=-1))
    scores = module.score(torch.cat([emb, coverage[:, None]], dim=-1))[:, 0]
    points = F.layer_norm(x, (c,))
    means = (assign @ points) / assign.sum(dim=1, keepdim=True).clamp_min(1.0)
    distortion = ((points - assign.T @ means) ** 2).mean()
    out = features.clone()
    assignment = torch.zeros(n, q.shape[0], h, w)
    j = 0
    for i in range(n):
        if valid[i]:
            out[i] = y[j * h * w : (j + 1) * h * w].T.reshape(c, h, w)
            assignment[i] = assign[:, j * h * w : (j + 1) * h * w].reshape(-1, h, w)
            j += 1
    return out, assignment, emb, coverage, scores, distortion


def segclip_semantic_learner(module, x: torch.Tensor, noise: torch.Tensor | None = None, tau: float = 0.9):
    """SegCLIP's ``SemanticLearnerModule.forward`` on tokens ``(L, C)`` (``modules/module_seg_vit.py``).

    Re-stated from SegCLIP's code (ArrowLuo/SegCLIP), step by step, reading the weights of a
    :class:`~cosegkit.SetGrouping`: its ``CrossAttentionBlock`` (``q + Att(ln_x(q), ln_k([q; x]),
    ln_k([q; x]))``, then ``q + c_proj(QuickGELU(c_fc(ln_2(q))))``), ``cross_ln``, the grouped
    ``k_conv`` / ``v_conv`` on ``norm(x)``, ``k_ln``, the logits ``q . k``, its ``gumbel_softmax``
    over the groups with ``hard=True`` (the one-hot of ``softmax((logits + noise) / tau)`` in
    training; of ``softmax(logits)`` without ``noise``, as in its eval), the hard-assignment
    average of the values, and ``proj_o = LN, Mlp (fc1, GELU, fc2), QuickGELU``. QuickGELU is
    written out, ``x * sigmoid(1.702 x)``; SegCLIP's ``Mlp`` keeps ``nn.GELU``, its default.

    Returns:
        ``outputs`` (G, C), ``hard_attn`` (G, L), ``soft_attn`` (G, L), ``q_feat`` (G, C) and the
        logits ``attn`` (G, L).
    """

    def quick_gelu(t: torch.Tensor) -> torch.Tensor:
        return t * torch.sigmoid(1.702 * t)

    heads = module.heads
    in_feature = module.norm_tokens(x)  # self.norm(inputs)
    q_feat = module.centres
    for block in module.blocks:  # CrossAttentionBlock(q_feat, cat([q_feat, org_inputs]))
        kv = block.norm_kv(torch.cat([q_feat, x]))  # ln_k
        q_feat = q_feat + attention(block.to_q, block.to_kv, block.to_out, heads, block.norm_q(q_feat), kv)
        hidden = quick_gelu(block.mlp[0](block.norm_mlp(q_feat)))  # c_fc, QuickGELU
        q_feat = q_feat + block.mlp[2](hidden)  # c_proj
    q_feat = module.norm_centres(q_feat)  # cross_ln
    k_feat = F.conv1d(in_feature.T[None], module.to_k.weight, groups=heads)[0].T  # k_conv
    k_feat = module.norm_k(k_feat)  # k_ln
    v_feat = F.conv1d(in_feature.T[None], module.to_v.weight, groups=heads)[0].T  # v_conv
    attn = q_feat @ k_feat.T  # einsum("...si,...di->...sd")
    y_soft = ((attn + noise) / tau).softmax(dim=0) if noise is not None else attn.softmax(dim=0)
    hard_attn = torch.zeros_like(attn).scatter_(0, y_soft.argmax(dim=0, keepdim=True), 1.0)
    soft_attn = attn.softmax(dim=0)
    outputs = (hard_attn @ v_feat) / hard_attn.sum(dim=-1, keepdim=True).clamp_min(1.0)
    ln, mlp = module.embed[0], module.embed[1]
    outputs = quick_gelu(mlp[2](F.gelu(mlp[0](ln(q_feat + outputs)))))  # proj_o: ln, mlp (GELU inside), act
    return outputs, hard_attn, soft_attn, q_feat, attn

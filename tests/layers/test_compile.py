"""The layers compile to a single graph (no graph breaks) and match eager mode."""

from __future__ import annotations

import torch

from cosegkit import ClipInteraction, ClipRegularization, ImageSetCorrespondence


def test_layers_compile_without_graph_breaks() -> None:
    torch.manual_seed(0)
    isfc = ImageSetCorrespondence(16, heads=4).eval()
    inter = ClipInteraction(16, 8, top_k=2, heads=2).eval()
    reg = ClipRegularization(16, 8, num_prompts=5).eval()
    x, emb, text = torch.randn(2, 3, 16, 4, 4), torch.randn(2, 3, 8), torch.randn(5, 8)
    valid = torch.tensor([[True, True, False], [True, True, True]])

    def pipeline(x, emb, text, valid):
        f = isfc(x, valid)
        out = inter(f, emb, text, valid)
        return reg(out.features, out.similarity, text, valid).features

    compiled = torch.compile(pipeline, fullgraph=True)
    torch.testing.assert_close(compiled(x, emb, text, valid), pipeline(x, emb, text, valid), atol=1e-5, rtol=1e-4)

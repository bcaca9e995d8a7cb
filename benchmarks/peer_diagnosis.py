"""Where each model's J comes from: the set, the class, the mask's resolution.

For every trained run folder given (LCCo, its Baseline, UFO...), on the run's own held-out
sets (the sets its ``eval.json`` was scored on):

- ``J sets``: J with each set as drawn (``N`` images), as the results table scores it;
- ``J alone``: J with every image segmented alone (sets of one), the same images; the
  difference is what the model takes from the other images of its set;
- ``class``: how often the model's set-level class is the set's true class (UFO: the arg-max of
  its classification head; LCCo: the regularization's :math:`i^*`; a class oracle, told the
  class as in its evaluation: its own choice), or ``-`` without one;
- ``spread`` (UFO): the standard deviation over the held-out sets of each class logit of its
  head, averaged over the classes, against the logits' spread over the classes: a head whose
  logits are the same for every set has a spread of 0 over the sets;
- with ``--photos``, on a composite run: J on the held-out photos with each class's short last
  set padded (``J photos``, as the results table scores them) and filled by wrapping around to
  the class's first photos (``J wrapped``, as UFO's ``test.py`` fills its last group; every
  photo is still scored once);
- ``stride-4 ceiling``: J of the ground truth itself averaged over 4x4 cells and upsampled
  bilinearly, the best a mask predicted at stride 4 and upsampled can score (UFO predicts at
  stride 4 and upsamples with a transposed convolution; LCCo's decoder ends at its encoder's
  finest level).

    python benchmarks/peer_diagnosis.py runs/table/synthetic/{baseline,lcco,ufo}/seed0
    python benchmarks/peer_diagnosis.py runs/table/pascal/ufo/seed* --json diag.json
    python benchmarks/peer_diagnosis.py runs/table/pascal/{lcco,ufo}/seed0 --photos
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F


def photo_scores(model, config) -> dict:
    """J on the held-out photos, short sets padded (the table's) and wrapped (UFO's test.py)."""
    from cosegkit.data import EvalSets
    from cosegkit.engine import evaluate
    from cosegkit.engine.config import build_photo_eval_sets

    padded = build_photo_eval_sets(config)
    wrapped = EvalSets(padded.groups, config.eval_set_size, config.image_size, wrap=True, loader=padded.loader)
    names = [g.name for g in padded.groups]
    oracle = getattr(model, "class_oracle", False)
    scores = {}
    for key, sets in (("photos", padded), ("photos_wrapped", wrapped)):
        result = evaluate(model, sets, group_names=names, class_oracle=oracle)
        scores[f"J_{key}"], scores[f"images_{key}"] = result.J, result.images
    return scores


def diagnose(run: Path, batch_size: int = 4, photos: bool = False) -> dict:
    from torch.utils.data import DataLoader

    from cosegkit.data.sampling import collate_sets
    from cosegkit.engine import TrainConfig
    from cosegkit.engine.config import build_eval_sets
    from cosegkit.metrics import precision_jaccard, reduce_scores
    from cosegkit.models import load_model

    config = TrainConfig.load(run / "config.json")
    model = load_model(run).eval()
    sets = build_eval_sets(config)
    j_sets, j_alone, j_ceiling, hits, counted, logits = [], [], [], 0, 0, []
    with torch.no_grad():
        for batch in DataLoader(sets, batch_size=batch_size, collate_fn=collate_sets):
            images, masks, valid = batch["images"], batch["masks"], batch["valid"]
            size = tuple(masks.shape[-2:])
            oracle = getattr(model, "class_oracle", False)  # told each set's class, as its evaluation is
            given = {"common_class": batch["group"]} if oracle else {}
            out = model(images, valid, **given)
            alone = torch.cat([model(images[:, i : i + 1], **given).masks for i in range(images.shape[1])], dim=1)
            ceiling = F.interpolate(
                F.avg_pool2d(masks.flatten(0, 1).float(), 4), size=size, mode="bilinear", align_corners=False
            ).view_as(masks)
            for store, pred in ((j_sets, out.masks.sigmoid()), (j_alone, alone.sigmoid()), (j_ceiling, ceiling)):
                _, j = precision_jaccard(pred, masks, size=size, valid=valid)
                store.append(j)
            scores = getattr(out, "class_logits", None)  # UFO's head
            if scores is not None:
                logits.append(scores)
            if scores is None and oracle:
                scores = out.class_probs  # the oracle's own choice, not the class it was told
            choice = scores.argmax(-1) if scores is not None else getattr(out, "common_class", None)
            if choice is not None:
                hits += int((choice.cpu() == batch["group"]).sum())
                counted += len(choice)
    extra = photo_scores(model, config) if photos and config.dataset == "composite" else {}
    return {
        **extra,
        "run": str(run),
        "model": type(model).__name__
        + ("" if getattr(model, "use_regularization", True) else " (Baseline)")
        + (" (oracle)" if getattr(model, "class_oracle", False) else ""),
        "J_sets": float(reduce_scores(torch.cat(j_sets))),
        "J_alone": float(reduce_scores(torch.cat(j_alone))),
        "class_accuracy": hits / counted if counted else None,
        "J_stride4_ceiling": float(reduce_scores(torch.cat(j_ceiling))),
        "logit_spread_over_sets": float(torch.cat(logits).std(0).mean()) if logits else None,
        "logit_spread_over_classes": float(torch.cat(logits).std(1).mean()) if logits else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of cosegkit train")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument(
        "--photos", action="store_true", help="composite runs: J on the held-out photos, padded and wrapped"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [diagnose(run, photos=args.photos) for run in args.runs]
    print(f"{'run':<48} {'model':<16} {'J sets':>7} {'J alone':>8} {'class':>6} {'spread sets/classes':>20} "
          f"{'stride-4 ceiling':>17}")  # fmt: skip
    for r in rows:
        acc = "-" if r["class_accuracy"] is None else f"{100 * r['class_accuracy']:.1f}"
        spread = "-"
        if r["logit_spread_over_sets"] is not None:
            spread = f"{r['logit_spread_over_sets']:.4f} / {r['logit_spread_over_classes']:.4f}"
        print(f"{r['run'][-48:]:<48} {r['model']:<16} {100 * r['J_sets']:7.2f} {100 * r['J_alone']:8.2f} {acc:>6} "
              f"{spread:>20} {100 * r['J_stride4_ceiling']:17.2f}")  # fmt: skip
    for r in rows:
        if "J_photos" in r:
            print(f"{r['run'][-48:]:<48} photos: J {100 * r['J_photos']:.2f} (short sets padded), "
                  f"{100 * r['J_photos_wrapped']:.2f} (wrapped)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

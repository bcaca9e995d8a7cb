"""The ``cosegkit`` command: ``demo``, ``train``, ``evaluate``, ``segment``, ``export``, ``push``,
``pretrain-clip``, ``plot`` and ``app``.

``python -m cosegkit`` runs the same command. Bad arguments end with a one-line error (exit
status 2), not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _none_or_str(value: str) -> str | None:
    return None if value.lower() in ("none", "random", "") else value


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _set_size(value: str) -> int | None:
    return None if value.lower() in ("all", "none", "group") else _positive(value)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from cosegkit._names import DATASETS

    p = sub.add_parser(
        "train",
        help="train LCCo (or an ablation of it, or its peer UFO) and write a run folder",
        formatter_class=_FORMATTER,
        description="Train LCCo on a dataset and write a run folder: config.json, metrics.jsonl, "
        "checkpoints/, model/ and eval.json.",
        epilog="""examples:
  # the paper's set-up on PASCAL VOC 2012's training split (downloads ImageNet and CLIP weights)
  cosegkit train --dataset voc_segmentation --root data/VOCdevkit/VOC2012 --out runs/pascal

  # offline, random weights, train on some classes and evaluate on others
  cosegkit train --dataset pascal_voc --root ../shared/data/pascal_voc_coseg \\
      --classes Aero Bird Boat Bus --eval-classes Cat Dog \\
      --encoder resnet18 --encoder-weights none --clip-pretrained none --steps 200

  # the single-image Baseline (all three modules off)
  cosegkit train --dataset synthetic --no-correspondence --no-interaction --no-regularization

  # a ceiling: LCCo told each set's true class in eq. 8 (generated worlds; evaluate gives it the classes too)
  cosegkit train --dataset synthetic --class-oracle

  # the peer UFO (group transformer, intra-MLP, class head; its own loss) on UFO's VGG16-BN
  cosegkit train --dataset pascal_voc --root ../shared/data/pascal_voc_coseg --model ufo --encoder vgg16_bn
  # the composite world: real object cut-outs of masked photos pasted into generated sets, split by photo
  # (30% of each class's photos held out; the run scores held-out sets and the held-out photos themselves)
  cosegkit train --dataset composite --root ../shared/data/pascal_voc_coseg --reader pascal_voc \
      --image-size 128 --world-objects 2 3 --held-out 0.3 --split-seed 0 --out runs/composite

  # groups of photos without masks: train on CLIP's zero-shot pseudo masks (photos/images/<group>/*.jpg)
  cosegkit train --pseudo-masks zero-shot --dataset folder --root photos/ --out runs/photos

  # continue an interrupted run, on 2 GPUs or CPU processes
  torchrun --nproc-per-node 2 -m cosegkit train --out runs/pascal --resume

  # extend a finished 1000-step run to 2000 steps (the schedule of a 2000-step run from step 1000 on)
  cosegkit train --out runs/pascal --resume --steps 2000

  # fine-tune a trained model on other classes (its architecture and weights; a new optimizer)
  cosegkit train --init-from runs/pascal --dataset pascal_voc --root ../shared/data/pascal_voc_coseg \
      --classes Cat Dog --steps 200 --out runs/pascal-pets

  # fp16 mixed precision with a gradient scaler (GPUs without bf16)
  cosegkit train --dataset synthetic --amp fp16 --device cuda
""",
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset",
        choices=DATASETS,
        default="synthetic",
        help="synthetic, composite (real cut-outs of --root's photos; needs --reader) or a reader (default: synthetic)",
    )
    d.add_argument("--root", help="dataset folder (for coco: the instances json)")
    d.add_argument("--coco-images", help="coco only: the image folder")
    d.add_argument("--classes", nargs="+", metavar="GROUP", help="train on these groups only")
    d.add_argument("--eval-classes", nargs="+", metavar="GROUP", help="evaluate on these groups at the end")
    _add_world_options(d)
    _add_reader_options(d)
    d.add_argument("--image-size", type=_positive, default=224, help="training image side (default 224)")
    d.add_argument("--set-size", type=_positive, default=5, help="images per set N (default 5)")
    d.add_argument("--batch-size", type=_positive, default=2, help="sets per step B (default 2)")
    d.add_argument("--no-augment", action="store_true", help="no flip, scale-crop or colour jitter")
    d.add_argument("--workers", type=int, default=0, help="data-loader worker processes (default 0)")
    m = p.add_argument_group("model")
    m.add_argument("--encoder", default="resnet50", help="smp encoder, or tu-<timm name> (default resnet50)")
    m.add_argument("--encoder-weights", type=_none_or_str, default="imagenet", help="tag, file, or none")
    m.add_argument("--encoder-depth", type=_positive, default=5, help="encoder stages (default 5)")
    m.add_argument("--decoder-channels", type=_positive, nargs="+", help="decoder widths, deepest first")
    m.add_argument(
        "--model",
        choices=("lcco", "ufo"),
        default="lcco",
        help="the network: lcco (default) or ufo, the peer (UFO's group transformer, its own loss; "
        "the CLIP and module flags do not apply to it)",
    )
    m.add_argument("--ufo-dim", type=_positive, default=512, help="UFO: channels of every level (UFO's 512)")
    m.add_argument("--clip-model", default="ViT-B-16", help="open_clip architecture (default ViT-B-16)")
    m.add_argument("--clip-pretrained", type=_none_or_str, default="openai", help="tag, file, or none")
    m.add_argument("--no-correspondence", action="store_true", help="switch off ISFC (eq. 1-2)")
    m.add_argument("--no-interaction", action="store_true", help="switch off CLIP interaction (eq. 3-5)")
    m.add_argument("--no-regularization", action="store_true", help="switch off CLIP regularization (eq. 6-8)")
    m.add_argument(
        "--class-oracle",
        action="store_true",
        help="a ceiling, not a model for new images: give eq. 8 each set's true class instead of its own i* "
        "(training and scoring; generated worlds only)",
    )
    m.add_argument(
        "--variant",
        choices=("default", "paper"),
        default="default",
        help="module readings: default (what trains best) or paper (eq. 2, 5, 7, 8 as printed)",
    )
    flag = argparse.BooleanOptionalAction
    m.add_argument("--residual", action=flag, help="F + F_hat in the CLIP modules (default: the variant's)")
    m.add_argument("--correspondence-residual", action=flag, help="F + F_hat in ISFC (default: the variant's)")
    m.add_argument("--unit-scale", action=flag, help="z and h_txt at unit RMS in eq. 5/8 (default: the variant's)")
    m.add_argument(
        "--class-pool", choices=("max", "mean"), help="eq. 7's pooling over the set (default: the variant's)"
    )
    m.add_argument("--class-prior", type=float, help="weight of CLIP's own ranking in eq. 7 (default: the variant's)")
    m.add_argument("--top-k", type=_positive, default=5, help="distilled text embeddings K (default 5)")
    m.add_argument("--heads", type=_positive, default=8, help="attention heads (default 8)")
    m.add_argument(
        "--grouping", action="store_true", help="add the set-level grouping layer (SetGrouping, an extension)"
    )
    m.add_argument(
        "--grouping-level", type=int, choices=(1, 2, 3), default=1, help="decoder level of the grouping (default 1)"
    )
    m.add_argument("--num-groups", type=_positive, default=8, help="grouping centres G (default 8)")
    m.add_argument("--grouping-layers", type=_positive, default=2, help="grouping cross-attention blocks (default 2)")
    m.add_argument(
        "--grouping-activation",
        choices=("gelu", "quick_gelu"),
        default="gelu",
        help="activation of the grouping layer's MLPs: gelu (default) or quick_gelu (SegCLIP's)",
    )
    m.add_argument("--grouping-weight", type=float, default=1.0, help="weight of the grouping mask loss (default 1)")
    m.add_argument(
        "--distortion-weight",
        type=float,
        default=0.0,
        help="weight of the grouping's k-means distortion loss (default 0: off)",
    )
    m.add_argument(
        "--superpixel-weight", type=float, default=0.0, help="weight of the superpixel loss (default 0: off)"
    )
    m.add_argument(
        "--superpixels",
        choices=("felzenszwalb", "slic"),
        default="felzenszwalb",
        help="superpixel method of the superpixel loss (scikit-image; cached in <out>/superpixels)",
    )
    m.add_argument(
        "--init-from",
        metavar="MODEL",
        help="fine-tune a trained model (a model folder, a run folder or a hub name org/name): its architecture "
        "and weights, this command's data and optimisation (from step 0)",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--steps",
        type=_positive,
        help="optimizer steps (default 1000); with --resume, a larger number extends the run to it",
    )
    o.add_argument("--epochs", type=float, help="instead of --steps: passes over the training images")
    o.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    o.add_argument("--encoder-lr", type=float, help="learning rate of the encoder (default: --lr)")
    o.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    o.add_argument("--warmup", type=int, default=0, help="linear warm-up steps before the cosine schedule")
    o.add_argument("--lambda1", type=float, default=1.0, help="weight of the coarse segmentation loss (eq. 9)")
    o.add_argument("--lambda2", type=float, default=1.0, help="weight of the classification loss (eq. 9)")
    o.add_argument(
        "--class-targets",
        choices=("cached", "per-set"),
        default="cached",
        help="eq. 12's target: cached (each image's masked embedding computed once, un-augmented; "
        "cached in <out>/class_targets) or per-set (a second CLIP pass every step) (default cached)",
    )
    o.add_argument("--seed", type=int, default=0, help="initialisation and data seed (default 0)")
    s = p.add_argument_group(
        "training without masks",
        "--pseudo-masks zero-shot: before training, the run's CLIP segments every training image\n"
        "zero-shot (each group's class decided from all its images; on a generated world, each of\n"
        "--pseudo-pool generated sets, every item distinct by default); the maps are cached in\n"
        "<out>/pseudo_masks and reused by --resume. Pixels within --pseudo-margin of each map's own\n"
        "threshold (or, with --pseudo-rule fixed, between --pseudo-low and --pseudo-high) are ignored.\n"
        "Training reads no mask of the dataset (a folder's masks/ is ignored; only the held-out evaluation of --eval-classes uses the masks it finds).",
    )
    s.add_argument("--pseudo-masks", choices=("zero-shot",), help="train on pseudo masks instead of ground truth")
    s.add_argument("--pseudo-low", type=float, default=0.25, help="fixed: background where the map is <= this (0.25)")
    s.add_argument("--pseudo-high", type=float, default=0.55, help="fixed: object where the map is >= this (0.55)")
    s.add_argument(
        "--pseudo-rule",
        choices=("fixed", "adaptive"),
        default="adaptive",
        help="adaptive (default): each map's own P/J threshold t (ssnm); fixed: --pseudo-low/--pseudo-high",
    )
    s.add_argument(
        "--pseudo-margin", type=float, default=0.1, help="adaptive: ignore maps within t +- this (default 0.1)"
    )
    s.add_argument(
        "--pseudo-templates",
        nargs="+",
        metavar="TEMPLATE",
        help="zero-shot prompt templates (default CLIP-ES's 'a clean origami {}.')",
    )
    s.add_argument("--pseudo-background", nargs="+", metavar="WORD", help="background words (default CLIP-ES's 25)")
    s.add_argument(
        "--pseudo-pool",
        type=_positive,
        metavar="N",
        help="generated worlds: train on N generated sets, labelled once (default steps x batch size)",
    )
    _add_clip_es_numerics(s, prefix="pseudo-")
    r = p.add_argument_group("run")
    r.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<time>)")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint (with --steps N larger than its steps: extend it)",
    )
    r.add_argument("--checkpoint-every", type=_positive, default=500, help="steps between checkpoints")
    r.add_argument("--log-every", type=_positive, default=10, help="steps between metrics.jsonl lines")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (default auto)")
    r.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        choices=("bf16", "fp16"),
        help="mixed precision on a CUDA GPU: bf16 (plain --amp) or fp16 (with a gradient scaler); refused on the CPU",
    )
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--eval-set-size", type=_set_size, default=5, help="images per evaluation set, or 'all'")
    r.add_argument(
        "--eval-sets", type=_positive, default=40, help="synthetic, composite: held-out sets scored at the end"
    )
    r.add_argument("--eval-preset", choices=("ssnm", "ufo", "fixed"), default="ssnm", help="P/J binarisation")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    w = p.add_argument_group(
        "watching a run",
        "--log tensorboard writes <out>/tensorboard (tensorboard --logdir <out>); --eval-every K scores the\n"
        "held-out sets every K steps into <out>/validation.jsonl and keeps the best model by J in <out>/best\n"
        "(best/model for evaluate and segment; best/ resumes with --resume --out <out>/best).\n"
        "cosegkit plot <out> draws the curves without TensorBoard.",
    )
    w.add_argument(
        "--log",
        "--logger",
        dest="log",
        nargs="+",
        choices=("tensorboard",),
        metavar="LOGGER",
        help="also log to: tensorboard (the optional extra cosegkit[tensorboard]); metrics.jsonl is always written. "
        "Under torchrun spell it --logger (torchrun takes --log for its own --log-dir)",
    )
    w.add_argument(
        "--eval-every",
        type=_positive,
        metavar="K",
        help="score the held-out sets (synthetic, composite, or --eval-classes) every K steps; keep the best",
    )
    w.add_argument(
        "--validation-sets",
        type=_positive,
        metavar="N",
        help="--eval-every: score N of the held-out sets, spread evenly (default all: those scored at the end)",
    )
    p.set_defaults(func=_cmd_train)


def _add_world_options(group: argparse._ArgumentGroup) -> None:
    """The generated worlds' settings: the synthetic world's classes, the composite world's photos and split."""
    from cosegkit._names import READER_NAMES

    group.add_argument("--world-classes", type=_positive, default=16, help="synthetic world: classes (default 16)")
    group.add_argument(
        "--world-seed", type=int, default=0, help="synthetic world: which classes; both worlds: the sets (default 0)"
    )
    group.add_argument(
        "--world-objects",
        type=_positive,
        nargs="+",
        default=[2, 3],
        metavar="K",
        help="synthetic and composite worlds: objects per image, K or LOW HIGH (default 2 3)",
    )
    group.add_argument(
        "--reader", choices=sorted(READER_NAMES), help="composite world: the layout of --root's masked photos"
    )
    group.add_argument(
        "--held-out",
        type=float,
        default=0.3,
        help="composite world: the share of each class's photos held out of training (default 0.3)",
    )
    group.add_argument(
        "--split-seed", type=int, default=0, help="composite world: which photos are held out (default 0)"
    )


def _world_objects(values: Sequence[int]) -> tuple[int, int]:
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2 and values[0] <= values[1]:
        return (values[0], values[1])
    raise _UsageError(
        f"--world-objects takes K or LOW HIGH with LOW <= HIGH (objects per image), got {' '.join(map(str, values))}"
    )


def _add_reader_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--missing-masks",
        choices=("error", "skip"),
        default="error",
        help="an image without a mask: stop (error, default) or leave it out with a warning (skip)",
    )
    group.add_argument(
        "--on-empty",
        choices=("error", "warn"),
        default="error",
        help="a group without images: stop (error, default) or leave it out with a warning (warn)",
    )


def _config_from_args(args: argparse.Namespace):
    from cosegkit.engine.config import TrainConfig

    return TrainConfig(
        dataset=args.dataset,
        root=args.root,
        coco_images=args.coco_images,
        classes=args.classes,
        eval_classes=args.eval_classes,
        world_classes=args.world_classes,
        world_seed=args.world_seed,
        world_objects=_world_objects(args.world_objects),
        reader=args.reader,
        held_out=args.held_out,
        split_seed=args.split_seed,
        missing_masks=args.missing_masks,
        on_empty=args.on_empty,
        image_size=args.image_size,
        set_size=args.set_size,
        batch_size=args.batch_size,
        augment=not args.no_augment,
        workers=args.workers,
        model=args.model,
        ufo_dim=args.ufo_dim,
        encoder=args.encoder,
        encoder_weights=args.encoder_weights,
        encoder_depth=args.encoder_depth,
        decoder_channels=args.decoder_channels,
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        use_correspondence=not args.no_correspondence,
        use_interaction=not args.no_interaction,
        use_regularization=not args.no_regularization,
        class_oracle=args.class_oracle,
        top_k=args.top_k,
        heads=args.heads,
        variant=args.variant,
        residual=args.residual,
        correspondence_residual=args.correspondence_residual,
        unit_scale=args.unit_scale,
        class_pool=args.class_pool,
        class_prior=args.class_prior,
        use_grouping=args.grouping,
        grouping_level=args.grouping_level,
        num_groups=args.num_groups,
        grouping_layers=args.grouping_layers,
        grouping_activation=args.grouping_activation,
        grouping_weight=args.grouping_weight,
        distortion_weight=args.distortion_weight,
        superpixel_weight=args.superpixel_weight,
        superpixel_method=args.superpixels,
        steps=args.steps if args.steps is not None else 1000,
        lr=args.lr,
        encoder_lr=args.encoder_lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        lambda1=args.lambda1,
        lambda2=args.lambda2,
        class_targets=args.class_targets,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        eval_set_size=args.eval_set_size,
        eval_preset=args.eval_preset,
        pseudo_masks=args.pseudo_masks,
        pseudo_low=args.pseudo_low,
        pseudo_high=args.pseudo_high,
        pseudo_rule=args.pseudo_rule,
        pseudo_margin=args.pseudo_margin,
        pseudo_templates=args.pseudo_templates,
        pseudo_background=args.pseudo_background,
        pseudo_pool=args.pseudo_pool,
        extra=_train_extra(args),
        log=args.log,
        eval_every=args.eval_every,
        validation_sets=args.validation_sets,
        init_from=args.init_from,
    )


def _train_extra(args: argparse.Namespace) -> dict:
    """TrainConfig.extra: a generated world's held-out sets; the zero-shot settings of --pseudo-masks."""
    from cosegkit.engine.config import GENERATED_DATASETS

    extra: dict = {"eval_sets": args.eval_sets} if args.dataset in GENERATED_DATASETS else {}
    zero_shot = {
        name: getattr(args, "pseudo_" + name)
        for name in ("box_precision", "cam_scaling", "pos_interpolation")
        if getattr(args, "pseudo_" + name) is not None
    }
    if zero_shot:
        if args.pseudo_masks is None:
            flags = ", ".join("--pseudo-" + name.replace("_", "-") for name in zero_shot)
            raise _UsageError(f"{flags}: only with --pseudo-masks zero-shot (they set how the pseudo masks are made)")
        extra["zero_shot"] = zero_shot
    return extra


def _log_to_stderr() -> None:
    """Show the ``cosegkit.engine`` loggers' INFO lines on stderr (once per process, main rank only)."""
    import logging
    import os

    class StderrHandler(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it between tests)."""

        @property
        def stream(self):  # type: ignore[override]
            return sys.stderr

        @stream.setter
        def stream(self, value) -> None:
            pass

    logger = logging.getLogger("cosegkit.engine")
    if os.environ.get("RANK", "0") != "0" or any(getattr(h, "_cosegkit_cli", False) for h in logger.handlers):
        return
    handler = StderrHandler()
    handler._cosegkit_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not twice once open_clip's logging.info() has given the root logger a handler


def _cmd_train(args: argparse.Namespace) -> int:
    import os
    import time

    from cosegkit.engine.trainer import train

    if args.resume:
        if not args.out:
            raise _UsageError("--resume needs the run folder: --out RUN_DIR")
        defaults = vars(build_parser().parse_args(["train"]))
        given = [
            "--" + k.replace("_", "-")
            for k, v in vars(args).items()
            if k not in ("resume", "out", "no_progress", "func", "command", "steps") and defaults.get(k) != v
        ]
        if given:
            raise _UsageError(
                f"--resume continues the run with the settings in its config.json; drop {' '.join(given)} "
                f"(--steps N, larger than its steps, extends it; other settings need a new run: a new --out)"
            )
        config = None
        if args.steps is not None:  # extend the run to --steps (train() refuses fewer)
            import dataclasses

            from cosegkit.engine.config import TrainConfig

            saved = Path(args.out) / "config.json"
            if saved.is_file():  # else train() says what a run folder is
                config = dataclasses.replace(TrainConfig.load(saved), steps=args.steps)
    else:
        config = _config_from_args(args)
        if args.epochs is not None:
            from cosegkit.engine.config import steps_for_epochs

            config.steps = steps_for_epochs(config, args.epochs)
    out = args.out or f"runs/{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    _log_to_stderr()  # the trainer's notes (pseudo masks: each group's class; a skipped evaluation)
    result = train(config, out, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, the main process reports
    if args.resume and result.last_loss != result.last_loss:  # NaN: no step was left to run
        print(f"run folder: {result.run_dir}  (all {result.steps} steps were already done; nothing was trained)")
    else:
        print(f"run folder: {result.run_dir}  (steps {result.steps}, last loss {result.last_loss:.4f})")
    if result.evaluation is not None:
        ev = result.evaluation
        what = "held-out composite sets" if result.photo_evaluation is not None else "held-out evaluation"
        print(f"{what} ({ev.preset}, {ev.images} images): P {100 * ev.P:.2f}  J {100 * ev.J:.2f}")
    if result.photo_evaluation is not None:
        ev = result.photo_evaluation
        print(f"held-out photos ({ev.preset}, {ev.images} images): P {100 * ev.P:.2f}  J {100 * ev.J:.2f}")
    best = result.run_dir / "best" / "best.json"
    if best.is_file():
        record = json.loads(best.read_text())
        print(f"best validation J {100 * record['J']:.2f} at step {record['step']}: {best.parent / 'model'}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a trained model (or zero-shot CLIP) on datasets with P and J",
        formatter_class=_FORMATTER,
        description="Score a model folder (written by train or save_pretrained) on one or more datasets, "
        "or, with --zero-shot, a frozen CLIP and no trained model (CLIP-ES's softmax-GradCAM and CAA, "
        "the class each set shares found by CLIP). A model runs at the image size it was trained at, "
        "zero-shot at 224, unless --image-size says otherwise.",
        epilog="""examples:
  cosegkit evaluate --model runs/pascal/model --data pascal_voc=../shared/data/pascal_voc_coseg
  cosegkit evaluate --model runs/pascal/model --data icoseg=data/icoseg msrc=data/MSRC --preset ufo --per-group
  cosegkit evaluate --model runs/demo/model --data synthetic --json scores.json
  cosegkit evaluate --model my-lab/lcco-pascal --data icoseg=data/icoseg    # a model on the hub (cosegkit push)

  # a run on the composite world: its held-out composite sets and its held-out photos (--on both)
  cosegkit evaluate --model runs/composite --data composite
  cosegkit evaluate --model runs/composite --data composite --on photos --set-size all --per-group

  # zero-shot: no training, a frozen CLIP (downloads the weights once; or --clip-pretrained FILE)
  cosegkit evaluate --zero-shot --clip-model ViT-B-16 --clip-pretrained openai --data icoseg=data/icoseg
  cosegkit evaluate --zero-shot --data msrc=data/MSRC --vocabulary names.txt --no-caa --json zs.json
  cosegkit evaluate --zero-shot --method segclip --clip-pretrained segclip.bin --data icoseg=data/icoseg
""",
    )
    p.add_argument(
        "--model",
        help="a model folder, a run folder (its model/ is used) or a hub name ORG/NAME[@REVISION]; or --zero-shot",
    )
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="datasets as reader=folder; or synthetic, composite: the held-out data of the model's run",
    )
    p.add_argument(
        "--on",
        choices=("composite", "photos", "both"),
        default=None,
        help="--data composite: score the run's held-out composite sets, its held-out photos themselves "
        "(one group per class, as a benchmark distributes them), or both (default both)",
    )
    p.add_argument("--classes", nargs="+", metavar="GROUP", help="score these groups only")
    p.add_argument("--coco-images", metavar="FOLDER", help="--data coco=INSTANCES_JSON only: the image folder")
    _add_reader_options(p)
    p.add_argument("--preset", choices=("ssnm", "ufo", "fixed"), default="ssnm", help="binarisation (default ssnm)")
    p.add_argument("--set-size", type=_set_size, default=5, help="images per set, or 'all' (default 5)")
    p.add_argument(
        "--image-size",
        type=_positive,
        default=None,
        help="evaluation resolution (default: the size the model was trained at; 224 for --zero-shot)",
    )
    p.add_argument("--chunking", choices=("contiguous", "interleaved"), default="contiguous")
    p.add_argument("--batch-size", type=_positive, default=1, help="sets per forward pass")
    p.add_argument("--per-group", action="store_true", help="also print one line per group")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--device", default="auto")
    _add_zero_shot_options(p)
    p.set_defaults(func=_cmd_evaluate)


class _UsageError(Exception):
    pass


def _local_model(spec: str, flag: str = "--model") -> str:
    """The local folder of a model argument: ``spec`` itself, or the hub snapshot of ``ORG/NAME[@REVISION]``.

    Resolved once per command, so one download serves every read: evaluate and export call it first
    and pass its answer on; segment reads its model once, through _load_model; a local path passes
    through unchanged.
    """
    from cosegkit.errors import HubError
    from cosegkit.hub import resolve_model_folder

    try:
        return str(resolve_model_folder(spec, flag))
    except HubError as err:
        raise _UsageError(str(err)) from None


def _model_folder(path: str) -> Path:
    from cosegkit.models.lcco import model_folder

    folder = model_folder(_local_model(path))  # a run folder gives its model/, as LCCo.from_pretrained does
    if not (folder / "config.json").is_file():
        raise _UsageError(
            f"--model {path!r} is not a model folder (no config.json); pass --model a cosegkit train run "
            f"folder, its model/, a save_pretrained folder or the ORG/NAME of a model on the hub"
        )
    return folder


_OLDER_MODEL_SIZE = 224


def _trained_image_size(given: int | None, path: str) -> tuple[int, str | None]:
    """--image-size if given, else the size the model was trained at, else 224 and a notice to print.

    Reads the model's config.json only (no weights), so the data can be prepared before the
    model loads; the notice is printed once the model has loaded.
    """
    if given is not None:
        return given, None
    from cosegkit.models.loading import read_model_config

    folder = _model_folder(path)
    stored = read_model_config(folder).get("image_size")
    if stored is not None:
        return int(stored), None
    return _OLDER_MODEL_SIZE, (
        f"{folder / 'config.json'} stores no image size (saved by an older cosegkit): using {_OLDER_MODEL_SIZE}; "
        f"pass --image-size to choose"
    )


def _is_class_oracle(path: str) -> bool:
    """Whether the model folder's config.json says it is a class oracle (reads no weights)."""
    from cosegkit.models.loading import read_model_config

    return bool(read_model_config(_model_folder(path)).get("class_oracle", False))


def _notice(message: str | None) -> None:
    if message:
        print(message, file=sys.stderr)


def _load_model(path: str, device):
    from cosegkit.engine.pretrain import register_composite_clip, register_synthetic_clip
    from cosegkit.models.loading import load_model
    from cosegkit.testing import register_tiny_clips

    register_synthetic_clip()
    register_composite_clip()
    register_tiny_clips()
    folder = _model_folder(path)
    return load_model(folder, map_location=device), folder


# ---------------------------------------------------------------------- zero-shot (evaluate, segment)
#: the zero-shot options that set CLIP-ES's method only (refused with --method segclip)
_CLIP_ES_OPTIONS = (
    "clip_model",
    "background",
    "background_file",
    "synonyms",
    "no_caa",
    "attention_blocks",
    "box_threshold",
    "box_precision",
    "cam_scaling",
    "pos_interpolation",
)
#: the options of --method segclip only
_SEGCLIP_OPTIONS = ("segclip_grouping", "segclip_readout", "segclip_top_k")
#: every zero-shot option (refused with --model; the order names a segment run's resume key)
_ZERO_SHOT_OPTIONS = (
    "method",
    *_SEGCLIP_OPTIONS,
    _CLIP_ES_OPTIONS[0],
    "clip_pretrained",
    "class_name",
    "vocabulary",
    "templates",
    *_CLIP_ES_OPTIONS[1:],
)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _fraction(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}") from None
    if not 0 <= x < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}")
    return x


def _add_zero_shot_options(p: argparse.ArgumentParser) -> None:
    z = p.add_argument_group(
        "zero-shot (instead of --model)",
        "No trained model: a frozen CLIP names each set's common class and segments it with "
        "CLIP-ES's softmax-GradCAM and CAA (GradCAM alone on ResNet towers); with --method segclip, "
        "a SegCLIP model's groups, each pixel given its group's affinity to the class.",
    )
    z.add_argument("--zero-shot", action="store_true", help="use a frozen CLIP instead of --model")
    z.add_argument(
        "--method",
        choices=("clip-es", "segclip"),
        help="clip-es (default): a CLIP's softmax-GradCAM and CAA; segclip: the groups of a SegCLIP model "
        "(--clip-pretrained segclip.bin, SegCLIP's released checkpoint, or a model folder of "
        "'cosegkit pretrain-clip --method segclip', local or a hub name ORG/NAME)",
    )
    z.add_argument(
        "--segclip-grouping",
        choices=("image", "set"),
        help="segclip: group each image alone (SegCLIP's; default) or the whole set with shared centres",
    )
    z.add_argument(
        "--segclip-readout",
        choices=("hard", "soft"),
        help="segclip: each pixel takes its argmax group's affinity (SegCLIP's; default) or every group's by share",
    )
    z.add_argument(
        "--segclip-top-k",
        type=_positive,
        metavar="K",
        help="segclip: classes of the image embedding a group may take (default 5, SegCLIP's; the set's class always)",
    )
    z.add_argument("--clip-model", metavar="NAME", help="open_clip architecture (default ViT-B-16)")
    z.add_argument(
        "--clip-pretrained",
        metavar="TAG|FILE",
        help="weights: open_clip tag, file, or none (default openai); segclip: segclip.bin, a model folder or a "
        "hub name ORG/NAME",
    )
    z.add_argument("--class-name", metavar="NAME", help="segment this class in every set (default: each set's best)")
    z.add_argument(
        "--vocabulary",
        nargs="+",
        metavar="FILE|NAME",
        help="class names, or files of one name per line (default: cosegkit.clip.DEFAULT_VOCABULARY)",
    )
    z.add_argument(
        "--templates", nargs="+", metavar="T", help="prompt templates with one '{}' (default 'a clean origami {}.')"
    )
    z.add_argument("--background", nargs="+", metavar="WORD", help="background words (default: CLIP-ES's 25)")
    z.add_argument("--background-file", metavar="FILE", help="background words, one per line")
    z.add_argument(
        "--synonyms",
        metavar="FILE",
        help='JSON {"name": ["synonym", ...]}: one fused prompt per name, over the defaults ([]: the name alone)',
    )
    z.add_argument("--no-caa", action="store_true", help="no CAA refinement: the softmax-GradCAM alone")
    z.add_argument("--attention-blocks", type=_positive, metavar="N", help="CAA: last blocks averaged (default 8)")
    z.add_argument("--box-threshold", type=_fraction, metavar="X", help="CAA: box threshold in [0, 1) (default 0.4)")
    _add_clip_es_numerics(z)


def _add_clip_es_numerics(group: argparse._ArgumentGroup, prefix: str = "") -> None:
    """The numerical details of CLIP-ES's code that ZeroShotCoseg follows by default, as flags."""
    from cosegkit._names import BOX_PRECISIONS, CAM_SCALINGS, POS_INTERPOLATIONS

    group.add_argument(
        f"--{prefix}box-precision",
        choices=BOX_PRECISIONS,
        help="CAA: the box threshold on the CAM's 8-bit copy (uint8, CLIP-ES's; default) or on the CAM (float)",
    )
    group.add_argument(
        f"--{prefix}cam-scaling",
        choices=CAM_SCALINGS,
        help="min-max scale the CAM twice (CLIP-ES's GradCAM; default) or once",
    )
    group.add_argument(
        f"--{prefix}pos-interpolation",
        choices=POS_INTERPOLATIONS,
        help="resize a ViT's positional embedding bilinearly (CLIP-ES's; default) or bicubically",
    )


def _check_method_options(args: argparse.Namespace) -> None:
    """Refuse the options of the zero-shot method not chosen."""
    segclip = args.method == "segclip"
    other = _CLIP_ES_OPTIONS if segclip else _SEGCLIP_OPTIONS
    given = [o for o in other if getattr(args, o) is not None and getattr(args, o) is not False]
    if given:
        flags = ", ".join("--" + o.replace("_", "-") for o in given)
        raise _UsageError(
            f"{flags}: not with --method {'segclip' if segclip else 'clip-es'} "
            f"({'CLIP-ES options' if segclip else 'options of --method segclip'})"
        )
    if segclip and args.clip_pretrained is None:
        raise _UsageError(
            "--method segclip needs --clip-pretrained FILE|FOLDER: SegCLIP's released segclip.bin "
            "(github.com/ArrowLuo/SegCLIP, releases) or a folder of 'cosegkit pretrain-clip --method segclip' "
            "(or its hub name ORG/NAME)"
        )


def _check_model_or_zero_shot(args: argparse.Namespace) -> None:
    if args.model and args.zero_shot:
        raise _UsageError("give either --model or --zero-shot, not both")
    if not args.model and not args.zero_shot:
        raise _UsageError("give --model MODEL_FOLDER, or --zero-shot for a frozen CLIP and no trained model")
    if args.model:
        given = [o for o in _ZERO_SHOT_OPTIONS if getattr(args, o) is not None and getattr(args, o) is not False]
        if given:
            flags = ", ".join("--" + o.replace("_", "-") for o in given)
            raise _UsageError(f"{flags}: only with --zero-shot (a trained model has its own CLIP and vocabulary)")
    else:
        _check_method_options(args)


def _read_lines(path: str, flag: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise _UsageError(f"{flag} {path!r}: cannot read it ({type(err).__name__}: {err})") from None
    lines = [line.strip() for line in text.splitlines()]
    words = [line for line in lines if line and not line.startswith("#")]
    if not words:
        raise _UsageError(f"{flag} {path!r} is empty; write one entry per line ('#' starts a comment)")
    return words


def _vocabulary(items: Sequence[str]) -> list[str]:
    names: list[str] = []
    for item in items:
        if Path(item).is_file():
            names += _read_lines(item, "--vocabulary")
        elif "/" in item or "\\" in item or item.lower().endswith((".txt", ".csv", ".json")):
            raise _UsageError(f"--vocabulary {item!r}: no such file (class names have no slash or extension)")
        elif item.strip():
            names.append(item.strip())
        else:
            raise _UsageError("--vocabulary: empty class name")
    dup = sorted({n for i, n in enumerate(names) if n in names[:i]})
    if dup:
        raise _UsageError(f"--vocabulary names these more than once: {dup[:10]}")
    return names


def _synonyms(path: str) -> dict[str, list[str]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise _UsageError(f"--synonyms {path!r}: cannot read it ({type(err).__name__}: {err})") from None
    except json.JSONDecodeError as err:
        raise _UsageError(f"--synonyms {path!r} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise _UsageError(f'--synonyms {path!r} must hold a JSON object {{"name": ["synonym", ...]}}')
    out: dict[str, list[str]] = {}
    for name, words in data.items():
        words = [words] if isinstance(words, str) else words
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise _UsageError(f"--synonyms {path!r}: {name!r} must map to a list of non-empty strings, got {words!r}")
        out[name] = [w.strip() for w in words]
    return out


def _prompt_settings(args: argparse.Namespace, default_templates: Sequence[str]) -> tuple[list[str], list[str]]:
    """The zero-shot vocabulary and templates of either method, with --class-name checked against them."""
    from cosegkit.clip import DEFAULT_VOCABULARY
    from cosegkit.zeroshot.coseg import _near

    classnames = _vocabulary(args.vocabulary) if args.vocabulary else list(DEFAULT_VOCABULARY)
    templates = list(args.templates) if args.templates else list(default_templates)
    for t in templates:
        try:
            ok = t.count("{}") == 1 and bool(t.format("x").strip())
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise _UsageError(f"--templates {t!r}: each template needs exactly one '{{}}' for the class name")
    if args.class_name is not None and args.class_name not in classnames:
        raise _UsageError(
            f"unknown --class-name {args.class_name!r}: not among the {len(classnames)} names of the "
            f"vocabulary; {_near(args.class_name, classnames)} (--vocabulary sets the names)"
        )
    return classnames, templates


def _zero_shot_settings(args: argparse.Namespace) -> dict:
    """ZeroShotCoseg's keyword arguments (and the vocabulary), checked before any CLIP is loaded."""
    from cosegkit.zeroshot import BACKGROUND_WORDS, CLIP_ES_TEMPLATES, DEFAULT_SYNONYMS

    classnames, templates = _prompt_settings(args, CLIP_ES_TEMPLATES)
    if args.background and args.background_file:
        raise _UsageError("give --background or --background-file, not both")
    if args.background_file:
        background = _read_lines(args.background_file, "--background-file")
    elif args.background:
        background = [w.strip() for w in args.background if w.strip()]
        if not background:
            raise _UsageError("--background: no words given")
    else:
        background = list(BACKGROUND_WORDS)
    if not set(background) - set(classnames):
        raise _UsageError("every background word is also a class name of the vocabulary; give other --background words")
    synonyms = dict(DEFAULT_SYNONYMS)
    if args.synonyms:
        synonyms.update(_synonyms(args.synonyms))
    return {
        "classnames": classnames,
        "templates": templates,
        "background": background,
        "synonyms": synonyms,
        "class_name": args.class_name,
        "attention_blocks": 8 if args.attention_blocks is None else args.attention_blocks,
        "box_threshold": 0.4 if args.box_threshold is None else args.box_threshold,
        "refine": not args.no_caa,
        "box_precision": args.box_precision or "uint8",
        "cam_scaling": args.cam_scaling or "twice",
        "pos_interpolation": args.pos_interpolation or "bilinear",
    }


def _load_zero_shot(args: argparse.Namespace, device):
    """A ZeroShotCoseg from the zero-shot options; prints one line saying what it is."""
    from cosegkit.clip import FrozenClip
    from cosegkit.engine.pretrain import register_composite_clip, register_synthetic_clip
    from cosegkit.testing import register_tiny_clips
    from cosegkit.zeroshot import ZeroShotCoseg

    if args.method == "segclip":
        return _load_segclip_zero_shot(args, device)
    settings = _zero_shot_settings(args)
    register_synthetic_clip()
    register_composite_clip()
    register_tiny_clips()
    name = args.clip_model or "ViT-B-16"
    pretrained = _none_or_str(args.clip_pretrained) if args.clip_pretrained is not None else "openai"
    clip = FrozenClip.from_name(name, pretrained, classnames=settings.pop("classnames"), device=device)
    zs = ZeroShotCoseg(clip, **settings).to(device)
    caa = "no CAA (ResNet tower)" if zs.tower == "resnet" else "CAA" if zs.refine else "no CAA"
    print(
        f"zero-shot: {clip.source['model_name']} ({pretrained or 'random weights'}), {zs.tower} tower, "
        f"{_plural(len(zs.classnames), 'class name')}, {_plural(len(zs.background), 'background word')}, "
        f"{_plural(len(zs.templates), 'template')}, {caa}" + (f", class {zs.class_name!r}" if zs.class_name else "")
    )
    return zs


def _load_segclip_zero_shot(args: argparse.Namespace, device):
    """A SegClipCoseg from --clip-pretrained (segclip.bin or a cosegkit SegCLIP folder); prints what it is."""
    from cosegkit.errors import WeightsUnavailableError
    from cosegkit.models import SegClip
    from cosegkit.zeroshot import SEGCLIP_TEMPLATES, SegClipCoseg

    classnames, templates = _prompt_settings(args, SEGCLIP_TEMPLATES)
    path = Path(_local_model(args.clip_pretrained, "--clip-pretrained"))  # a hub name: its downloaded folder
    try:
        model = SegClip.from_pretrained(path) if path.is_dir() else SegClip.from_segclip_checkpoint(path)
    except WeightsUnavailableError as err:
        raise _UsageError(f"--clip-pretrained {args.clip_pretrained!r}: {err}") from None
    zs = SegClipCoseg(
        model.to(device),
        classnames,
        templates=templates,
        class_name=args.class_name,
        grouping=args.segclip_grouping or "image",
        readout=args.segclip_readout or "hard",
        top_k=args.segclip_top_k or 5,
    )
    c = model.config
    print(
        f"zero-shot: SegCLIP ({args.clip_pretrained}), ViT {c.image_size} px patch {c.patch_size}, "
        f"{_plural(c.num_groups, 'group')} per {'set' if zs.grouping == 'set' else 'image'}, {zs.readout} read-out, "
        f"{_plural(len(zs.classnames), 'class name')}, {_plural(len(zs.templates), 'template')}"
        + (f", class {zs.class_name!r}" if zs.class_name else "")
    )
    return zs


def _data_hint(spec: str) -> str:
    """What to write instead of a --data entry without '=': NAME=PATH, with the folder reader for a folder."""
    from cosegkit.data.readers import READERS

    readers = ", ".join(sorted(READERS))
    if spec in READERS:
        return f"--data {spec!r}: give the dataset's folder as {spec}=PATH"
    if Path(spec).exists() or "/" in spec or "\\" in spec or spec.startswith("."):
        return (
            f"--data {spec!r}: name the dataset's layout before its folder, e.g. folder={spec} "
            f"(layouts: {readers}; or synthetic)"
        )
    return f"--data {spec!r}: give a dataset as LAYOUT=PATH (layouts: {readers}), or synthetic"


def _read_eval_groups(name: str, root: str, args: argparse.Namespace):
    """The groups of one --data entry, read with --missing-masks and --on-empty where the layout takes them."""
    import inspect

    from cosegkit.data.readers import get_reader

    reader = get_reader(name)
    accepted = inspect.signature(reader).parameters
    options = {"missing_masks": args.missing_masks, "on_empty": args.on_empty}
    if "image_root" in accepted:  # coco: the instances json, and the image folder beside it
        if not args.coco_images:
            raise _UsageError(
                f"--data {name}={root}: the {name} reader reads an instances json and needs the image folder too: "
                f"add --coco-images FOLDER"
            )
        options["image_root"] = args.coco_images
    return reader(root, **{k: v for k, v in options.items() if k in accepted})


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cosegkit.data.sampling import EvalSets
    from cosegkit.engine.config import (
        TrainConfig,
        build_eval_sets,
        build_photo_eval_sets,
        check_mask_sizes,
        composite_groups,
    )
    from cosegkit.engine.distributed import _pick_device
    from cosegkit.engine.evaluate import evaluate

    _check_model_or_zero_shot(args)
    if args.json:  # refuse a bad destination now, not after the evaluation has run
        destination = Path(args.json)
        if destination.is_dir():
            raise _UsageError(
                f"--json {args.json!r} is a folder; pass a file name, e.g. {str(destination / 'eval.json')!r}"
            )
        destination.parent.mkdir(parents=True, exist_ok=True)
    for generated in ("synthetic", "composite"):
        if args.zero_shot and generated in args.data:
            raise _UsageError(
                f"--data {generated} needs a trained model's run folder; --zero-shot takes reader=PATH datasets"
            )
    if args.on is not None and "composite" not in args.data:
        raise _UsageError("--on chooses what --data composite scores; add --data composite (a composite run's data)")
    if args.classes and "composite" in args.data:
        raise _UsageError(
            "--classes selects groups of reader=PATH datasets; --data composite scores the run's held-out data of "
            "every class it trained on"
        )
    if args.model:  # a hub name ORG/NAME: downloaded once, here, and read from the local copy after
        args.model = _local_model(args.model)
    # every dataset is read and checked before the model is loaded
    read = []
    for spec in args.data:
        name, _, root = spec.partition("=")
        if name in ("synthetic", "composite"):
            run_config = _model_folder(args.model).parent / "config.json"
            if not run_config.is_file():
                raise _UsageError(f"--data {name} needs a model inside a run folder (its config.json names the world)")
            stored = TrainConfig.load(run_config)
            if (name == "composite") != (stored.dataset == "composite"):
                raise _UsageError(
                    f"--data {name}: the model's run trained on dataset {stored.dataset!r}; "
                    + (
                        "--data composite scores a run of --dataset composite"
                        if name == "composite"
                        else "score a composite run with --data composite"
                    )
                )
            if name == "composite":
                check_mask_sizes(composite_groups(stored), remedy="or train on other classes (--classes)")
            read.append((name, stored))
            continue
        if not root:
            raise _UsageError(_data_hint(spec))
        groups = _read_eval_groups(name, root, args)
        if args.classes:
            groups = [g for g in groups if g.name in set(args.classes)]
            if not groups:
                raise _UsageError(f"none of {args.classes} is a group of {spec!r}")
        unlabelled = [g.name for g in groups if g.masks is None and "segmentations" not in g.meta]
        if unlabelled:
            raise _UsageError(
                f"--data {spec!r}: P and J need ground-truth masks, and these groups have none: {unlabelled[:10]}; "
                f"evaluate labelled data, or co-segment these images with 'cosegkit segment'"
            )
        check_mask_sizes(groups, remedy="or leave their groups out with --classes")
        read.append((name, groups))
    oracle = not args.zero_shot and _is_class_oracle(args.model)
    if oracle:
        readers = [name for name, data in read if not isinstance(data, TrainConfig)]
        if readers:
            raise _UsageError(
                f"--model {args.model!r} is a class oracle (trained with --class-oracle): it is scored told each "
                f"set's class, which only its own world's sets give by index (--data synthetic), not --data "
                f"{', '.join(readers)}"
            )
    notice = None
    if args.zero_shot:
        image_size = args.image_size or 224
    else:  # the size the model was trained at, unless --image-size says otherwise
        image_size, notice = _trained_image_size(args.image_size, args.model)
    datasets = []
    for name, data in read:
        if isinstance(data, TrainConfig) and data.dataset == "composite":  # the held-out data of the run
            data.image_size = image_size
            if args.on in (None, "both", "composite"):
                data.eval_set_size = args.set_size or data.set_size
                datasets.append(("composite", build_eval_sets(data), data.held_out_world().class_names))
            if args.on in (None, "both", "photos"):
                data.eval_set_size = args.set_size
                photos = build_photo_eval_sets(data, chunking=args.chunking)
                datasets.append(("photos", photos, [g.name for g in photos.groups]))
        elif isinstance(data, TrainConfig):  # the synthetic world of the model's run
            data.eval_set_size = args.set_size or data.set_size
            data.image_size = image_size
            datasets.append((name, build_eval_sets(data), data.world().class_names))
        else:
            dataset = EvalSets(data, args.set_size, image_size, chunking=args.chunking)
            datasets.append((name, dataset, [g.name for g in data]))
    device = _pick_device(args.device, 0)
    if args.zero_shot:
        model = _load_zero_shot(args, device)
    else:
        model, _ = _load_model(args.model, device)
        _notice(notice)
    results = {}
    for name, dataset, names in datasets:
        result = evaluate(
            model,
            dataset,
            preset=args.preset,
            batch_size=args.batch_size,
            group_names=names,
            device=device,
            class_oracle=oracle,
        )
        results[name] = result.to_dict()
        how = f"{args.preset}, class oracle: each set told its class" if oracle else args.preset
        print(f"{name:<12} images {result.images:>5}   P {100 * result.P:6.2f}   J {100 * result.J:6.2f}   ({how})")
        if args.per_group:
            for group, s in result.per_group.items():
                print(f"    {group:<24} images {s['images']:>4}   P {100 * s['P']:6.2f}   J {100 * s['J']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _segment_set_size(value: str) -> int | str:
    return "all" if value.lower() in ("all", "none", "group") else _positive(value)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="co-segment your own images and write one mask PNG per image",
        formatter_class=_FORMATTER,
        description="Co-segment images that share an object. Writes <out>/<stem>.png masks (0/255) at each "
        "image's original size and <out>/manifest.jsonl, one line per input: its mask and set. "
        "Sets: the images of each folder, in input order (folders never mixed unless --mix-folders), cut into "
        "ceil(M / n) sets of at most n = --set-size images whose sizes differ by at most one; no image is left "
        "alone (with --set-size 2 and an odd count one set takes three). The default n is the model's training "
        "set size, or 5 when it stores none. The images stream through --workers processes, so memory does not "
        "grow with their number. Running the same command again after an interruption skips the sets already "
        "written; under torchrun each process takes its share of the sets. "
        "With --zero-shot no trained model is needed: a frozen CLIP finds the class each set shares "
        "(printed per set; --class-name fixes it) and segments it with CLIP-ES's softmax-GradCAM and "
        "CAA, on the images resized to --image-size (default 224) as for a model.",
        epilog="""examples:
  cosegkit segment --model runs/pascal/model photos/*.jpg --out masks/
  cosegkit segment --model runs/pascal/model photos/ --out masks/ --overlay --set-size 8
  cosegkit segment --model runs/pascal/model 'photos/**/*.png' --out masks/ --skip-bad
  cosegkit segment --model runs/pascal photos/ --out masks/ --workers 8     # a large collection
  cosegkit segment --model my-lab/lcco-pascal photos/ --out masks/          # a model on the hub (cosegkit push)
  torchrun --nproc-per-node 2 -m cosegkit segment --model runs/pascal photos/ --out masks/

  # zero-shot: no trained model, a frozen CLIP (downloads the weights once; or --clip-pretrained FILE)
  cosegkit segment --zero-shot --clip-model ViT-B-16 --clip-pretrained openai photos/ --out masks/
  cosegkit segment --zero-shot photos/ --out masks/ --class-name cat --overlay
  cosegkit segment --zero-shot photos/ --out masks/ --vocabulary names.txt --background grass sky road
  # zero-shot with SegCLIP's groups (its released checkpoint, or a folder of pretrain-clip --method segclip)
  cosegkit segment --zero-shot --method segclip --clip-pretrained segclip.bin photos/ --out masks/

Options taking several values (--vocabulary, --templates, --background) go after the inputs,
or before another option: they take every word up to the next option.
""",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders, or glob patterns")
    p.add_argument("--model", help="a model folder, a run folder or a hub name ORG/NAME[@REVISION]; or --zero-shot")
    p.add_argument("--out", required=True, help="output folder (masks, manifest.jsonl)")
    p.add_argument(
        "--set-size",
        type=_segment_set_size,
        default=None,
        help="images per set at most, or 'all' (default: the model's training set size, else 5)",
    )
    p.add_argument(
        "--mix-folders", action="store_true", help="let images of different folders share a set (default: not)"
    )
    p.add_argument(
        "--image-size", type=_positive, default=None, help="network resolution (default: the model's, else 224)"
    )
    p.add_argument("--preset", choices=("ssnm", "ufo", "fixed"), default="ssnm", help="binarisation (default ssnm)")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files instead of stopping")
    p.add_argument(
        "--workers", type=int, default=None, help="image-reading processes (default: up to 4; 0: in this process)"
    )
    p.add_argument("--device", default="auto")
    _add_zero_shot_options(p)
    p.set_defaults(func=_cmd_segment)


def _class_reporter(zs):
    """An ``on_set`` for segment_files that prints the class each set was found to share."""

    def report(number: int, files: list[Path], output) -> None:
        scores = output.class_scores[0].float().cpu() / max(1, len(files))  # mean cosine over the set
        chosen = int(output.common_class[0])
        how = "--class-name" if zs.class_name else "found"
        others = [int(i) for i in scores.topk(min(3, scores.numel())).indices if int(i) != chosen][:2]
        runners = ", ".join(f"{zs.classnames[i]!r} {scores[i]:.3f}" for i in others)
        label = "CLIP's best others" if zs.class_name else "runners-up"
        where = files[0].name + (f" .. {files[-1].name}" if len(files) > 1 else "")
        print(
            f"set {number} ({_plural(len(files), 'image')}, {where}): {zs.classnames[chosen]!r} ({how}; "
            f"mean cosine {scores[chosen]:.3f}" + (f"; {label} {runners}" if runners else "") + ")"
        )

    return report


def _cmd_segment(args: argparse.Namespace) -> int:
    from cosegkit.data.io import IMAGE_EXTENSIONS
    from cosegkit.engine.distributed import cleanup, setup
    from cosegkit.engine.segment import DEFAULT_IMAGE_SIZE, collect_images, segment_files, stored_setting

    _check_model_or_zero_shot(args)
    try:
        files = collect_images(args.inputs)
    except FileNotFoundError as err:
        raise _UsageError(f"input {err}; pass image files, folders or glob patterns before --out") from None
    if not files:
        raise _UsageError(
            f"no image files found in {args.inputs} (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            f"pass image files, folders or glob patterns"
        )
    info = setup(args.device)
    on_set = None
    image_size = args.image_size
    if args.zero_shot:
        model = _load_zero_shot(args, info.device)
        on_set = _class_reporter(model)
        given = [f"--{o.replace('_', '-')}={getattr(args, o)}" for o in _ZERO_SHOT_OPTIONS if getattr(args, o)]
        key = " ".join(["zero-shot", *given])
    else:
        model, folder = _load_model(args.model, info.device)
        key = str(folder.resolve())
        if image_size is None and stored_setting(model, "image_size") is None:
            image_size = DEFAULT_IMAGE_SIZE
            if info.is_main:
                print(
                    f"{folder / 'config.json'} stores no image size (saved by an older cosegkit): "
                    f"segmenting at {DEFAULT_IMAGE_SIZE}; pass --image-size to choose"
                )
    try:
        written, skipped = segment_files(
            model,
            files,
            args.out,
            set_size=args.set_size,
            image_size=image_size,
            by_folder=not args.mix_folders,
            preset=args.preset,
            overlays=args.overlay,
            skip_bad=args.skip_bad,
            workers=args.workers,
            device=info.device,
            model_key=key,
            on_set=on_set,
            log=print,
        )
    except KeyboardInterrupt:
        print(
            f"cosegkit segment: interrupted; the sets finished so far are in {args.out}: "
            f"run the same command again to continue",
            file=sys.stderr,
        )
        return 130
    except OSError as err:  # the output folder: not writable, disk full
        raise _UsageError(f"writing to --out {args.out!r} failed: {type(err).__name__}: {err}") from None
    finally:
        cleanup()
    if info.is_main:
        print(
            f"wrote {len(written)} masks to {args.out} (listed in {Path(args.out) / 'manifest.jsonl'})"
            + (f"; skipped {len(skipped)} unreadable files" if skipped else "")
        )
        for path, reason in skipped:
            print(f"  skipped {path}: {reason}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the CPU demo: what the set-aware modules buy, on the synthetic world",
        formatter_class=_FORMATTER,
        description="Builds the synthetic world, pre-trains a small CLIP on its captions (cached), "
        "trains the single-image Baseline, LCCo and LCCo with the equations as printed (--variant paper) "
        "with the same budget, scores them on held-out sets "
        "and writes a figure. Under 10 minutes on a 2-core CPU; --quick is a smoke test of seconds.",
        epilog="""examples:
  cosegkit demo
  cosegkit demo --out demo-out --steps 1200
  cosegkit demo --quick
  cosegkit demo --world pascal --root data/pascal_voc_coseg   # real photographs
""",
    )
    p.add_argument("--out", default="cosegkit-demo", help="output folder (default cosegkit-demo)")
    p.add_argument("--steps", type=_positive, default=None, help="training steps per model")
    p.add_argument("--clip-steps", type=_positive, default=None, help="CLIP pre-training steps")
    p.add_argument("--quick", action="store_true", help="a tiny budget: checks the pipeline, measures nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--world",
        choices=("synthetic", "pascal"),
        default="synthetic",
        help="synthetic: coloured shapes (default); pascal: real PASCAL-VOC photos at --root, split by "
        "photo, as a composite world of their object cut-outs",
    )
    p.add_argument("--root", default=None, help="the PASCAL-VOC co-segmentation folder (--world pascal)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from cosegkit.demo import run_demo

    run_demo(
        args.out,
        steps=args.steps,
        clip_steps=args.clip_steps,
        quick=args.quick,
        seed=args.seed,
        progress=not args.no_progress,
        world=args.world,
        root=args.root,
    )
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="draw the training curves of one or several runs into a PNG (no TensorBoard needed)",
        formatter_class=_FORMATTER,
        description="Draw the curves of run folders into one PNG: one panel per quantity (each loss term, "
        "the learning rate, the class-choice accuracies of metrics.jsonl; held-out P and J of validation.jsonl, "
        "--eval-every, with eval.json's end-of-run score as a star), one line per run labelled with its "
        'folder\'s name. Needs matplotlib (pip install "cosegkit[plot]").',
        epilog="""examples:
  cosegkit plot runs/pascal --out curves.png
  cosegkit plot runs/lr-1e-4 runs/lr-3e-4 --out lr.png --metrics total J
""",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by cosegkit train --out")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument(
        "--metrics",
        nargs="+",
        metavar="NAME",
        help="quantities to draw, in order, e.g. total iou lr acc/istar P J (default: every one logged)",
    )
    p.add_argument("--columns", type=_positive, default=3, help="panels per row (default 3)")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from cosegkit.plot import plot_runs

    fig = plot_runs(args.runs, args.out, metrics=args.metrics, columns=args.columns)
    print(f"wrote {args.out}: {len(fig.axes)} panels, {len(args.runs)} run(s)")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained model's inference as an ONNX file or a torch.export program",
        formatter_class=_FORMATTER,
        description="Exports images (B, N, 3, S, S) in [0, 1] -> masks (B, N, 1, S, S) object "
        "probabilities, at a fixed B, N and S (by default the N and S the model was trained with; 5 and 224 "
        "for a model saved before cosegkit stored them), with everything inside (normalisation, CLIP image tower, "
        'text bank). A .onnx file needs the export extra (pip install "cosegkit[export]") and is '
        "checked against the eager model with onnxruntime; a .pt2 file is a torch.export program "
        "(torch.export.load(path).module()(images)).",
        epilog="""examples:
  cosegkit export --model runs/pascal/model --out lcco.onnx
  cosegkit export --model runs/pascal --out lcco.pt2 --set-size 8 --image-size 320
  cosegkit export --model my-lab/lcco-pascal@v1 --out lcco.onnx     # a hub model, at a branch, tag or commit
""",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a model folder, a run folder (its model/ is used) or a hub name ORG/NAME[@REVISION]",
    )
    p.add_argument("--out", required=True, help="the file to write: .onnx (ONNX) or .pt2 (torch.export)")
    p.add_argument(
        "--set-size", type=_positive, default=None, help="images per set N (default: the model's training set size)"
    )
    p.add_argument(
        "--image-size", type=_positive, default=None, help="square image side S (default: the model's training size)"
    )
    p.add_argument("--batch-size", type=_positive, default=1, help="sets per call B (default 1)")
    p.add_argument("--no-verify", action="store_true", help="do not compare the ONNX file with the eager model")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from cosegkit.export import _require_onnx, export_onnx, export_program, trained_size

    out = Path(args.out)
    if out.suffix not in (".onnx", ".pt2"):
        raise _UsageError(f"--out {args.out!r}: name a .onnx file (ONNX) or a .pt2 file (torch.export)")
    if out.is_dir():
        raise _UsageError(f"--out {args.out!r} is a folder; name the .onnx or .pt2 file to write")
    if out.suffix == ".onnx":
        _require_onnx()  # before the model is read
    source = _local_model(args.model)  # a hub name ORG/NAME: downloaded once, here
    image_size, notice = _trained_image_size(args.image_size, source)
    model, folder = _load_model(source, "cpu")
    _notice(notice)
    _, set_size = trained_size(model, image_size, args.set_size)
    shape = (args.batch_size, set_size, 3, image_size, image_size)
    if out.suffix == ".pt2":
        import time

        import torch

        tic = time.perf_counter()
        program = export_program(model, set_size=set_size, image_size=image_size, batch_size=args.batch_size)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(out))
        print(f"wrote {out} (torch.export, input {shape}, {time.perf_counter() - tic:.1f} s) from {folder}")
        return 0
    report = export_onnx(
        model,
        out,
        set_size=set_size,
        image_size=image_size,
        batch_size=args.batch_size,
        verify=not args.no_verify,
    )
    if report.max_abs_diff is not None and not report.max_abs_diff <= 1e-4:
        raise _UsageError(
            f"wrote {report.path}, but onnxruntime's masks differ from eager PyTorch's by up to "
            f"{report.max_abs_diff:.2e} (more than 1e-4): do not deploy this file; export the .pt2 program instead"
        )
    check = (
        f"; onnxruntime vs eager PyTorch: max |difference| {report.max_abs_diff:.2e}"
        if report.max_abs_diff is not None
        else ""
    )
    print(
        f"wrote {report.path} (ONNX, input 'images' {shape}, output 'masks', {report.size_mib:.1f} MiB, "
        f"{report.seconds:.1f} s) from {folder}{check}"
    )
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a trained model to the Hugging Face hub, with a generated model card",
        formatter_class=_FORMATTER,
        description="Uploads a model folder (weights and config.json) to the Hugging Face hub as ORG/NAME in one "
        "commit, with a generated model card (README.md): what the model is, how to load it, and, for the model/ "
        "of a cosegkit train run, the run's training settings, its eval.json table and its figure (figure.png or "
        "curves.png in the run folder or the folder around it, or --figure). The repository is created if "
        "missing. Load it back with LCCo.from_pretrained('ORG/NAME') (cosegkit.load_model for any architecture). "
        "Needs a token with write access: hf auth login, HF_TOKEN, or --token.",
        epilog="""examples:
  cosegkit push --model runs/pascal --repo my-lab/lcco-pascal
  cosegkit push --model runs/pascal/model --repo my-lab/lcco-pascal --private --license mit
  cosegkit push --model runs/pascal --repo my-lab/lcco-pascal --figure curves.png --revision ablation
  cosegkit push --model runs/pascal --repo my-lab/lcco-pascal --dry-run --out pushed/
""",
    )
    p.add_argument("--model", required=True, help="a model folder, or a run folder (its model/ is pushed)")
    p.add_argument("--repo", required=True, help="the hub repository, ORG/NAME (created if missing)")
    p.add_argument(
        "--private", action="store_true", help="create the repository private (an existing one keeps its own)"
    )
    p.add_argument("--token", default=None, help="a hub token with write access (default: HF_TOKEN or hf auth login's)")
    p.add_argument(
        "--revision",
        "--branch",
        dest="revision",
        default=None,
        help="the branch to push to (default main; created if missing)",
    )
    p.add_argument("--commit-message", default=None, help="the commit's message")
    p.add_argument(
        "--figure",
        action="append",
        default=None,
        metavar="IMAGE",
        help="an image to show in the card (repeat for more; default: the run's figure.png or curves.png)",
    )
    p.add_argument("--license", default=None, help="the weights' license as a hub identifier (mit, cc-by-4.0...)")
    p.add_argument(
        "--dry-run", action="store_true", help="upload nothing: write the repository's files into --out to look at"
    )
    p.add_argument("--out", default=None, help="with --dry-run: a new folder to write the files to")
    p.set_defaults(func=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> int:
    from cosegkit.errors import HubError
    from cosegkit.hub import check_figures, check_model_folder, check_repo_id, push_to_hub

    check_repo_id(args.repo, "--repo")
    if args.dry_run and args.out is None:
        raise _UsageError("--dry-run writes the repository's files into --out DIR; pass --out")
    if args.out is not None and not args.dry_run:
        raise _UsageError("--out is the folder of a --dry-run; pass --dry-run too, or leave --out out to upload")
    folder, _ = check_model_folder(args.model, "--model")
    check_figures(args.figure or [], "--figure")
    try:
        report = push_to_hub(
            folder,
            args.repo,
            private=True if args.private else None,
            token=args.token,
            revision=args.revision,
            commit_message=args.commit_message,
            figures=args.figure,
            license=args.license,
            dry_run_to=args.out if args.dry_run else None,
        )
    except HubError as err:
        print(f"cosegkit push: error: {err}", file=sys.stderr)
        return 1
    if report.folder is not None:
        print(f"dry run: wrote {len(report.files)} files for {report.repo_id} into {report.folder} (nothing uploaded):")
    else:
        print(f"pushed {folder} to {report.repo_id} ({report.revision}): {report.commit_url}")
    for name in report.files:
        print(f"  {name}")
    return 0


def _print_naming_accuracy(args: argparse.Namespace, scores: dict, where: str) -> None:
    print(
        f"held-out sets ({args.sets} of {args.set_size} images, {where}): the common class ranks first in "
        f"{100 * scores['set_top1']:.1f}% (top 5: {100 * scores['set_top5']:.1f}%; chance {100 * scores['chance']:.1f}%); "
        f"per image, the top class is one present in {100 * scores['image_top1']:.1f}% "
        f"(chance {100 * scores['image_chance']:.1f}%)"
    )


def _pretrain_segclip(args: argparse.Namespace, world, held, recipe, progress, bar, where: str) -> int:
    """``pretrain-clip --method segclip``: pre-train (or reuse) a SegClip; print its folder and accuracy."""
    from cosegkit.engine.segclip_pretrain import pretrain_segclip, segclip_zero_shot_accuracy
    from cosegkit.models.segclip import SegClip

    try:
        folder = pretrain_segclip(world, recipe, cache=not args.no_cache, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    scores = segclip_zero_shot_accuracy(SegClip.from_pretrained(folder), held, sets=args.sets, set_size=args.set_size)
    print(f"model folder: {folder}")
    _print_naming_accuracy(args, scores, where)
    if args.json:
        destination = Path(args.json)
        destination.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": str(folder), "architecture": recipe.architecture, "world": world.fingerprint(), **scores}
        destination.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _add_pretrain_clip(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain-clip",
        help="pre-train a small CLIP on a generated world's captions (cached); prints its weights file",
        formatter_class=_FORMATTER,
        description="Pre-trains a small CLIP with open_clip's contrastive loss on the captions of a generated "
        "world: the synthetic one (the coseg-synthetic-clip ViT), or the composite world of --root's photos (the "
        "coseg-composite-clip ResNet), built from its TRAINING photos only (--held-out and --split-seed choose "
        "them, as for 'cosegkit train'). The weights are cached by their settings and the world's content under "
        "$COSEGKIT_CACHE (default ~/.cache/cosegkit), so a second call returns at once. Prints the weights file "
        "and how well the CLIP names the classes of held-out sets (of the held-out photos, for composite): per "
        "set (the summed similarity's top class is the common one) and per image (the top class is one present). "
        "With --method segclip it pre-trains SegCLIP's grouping ViT instead (cosegkit.engine.segclip_pretrain), with "
        "SegCLIP's losses (contrastive, superpixel, reconstruction) on the same images and captions at the same "
        "budget, and prints its model folder.",
        epilog="""examples:
  cosegkit pretrain-clip --dataset composite --root ../shared/data/pascal_voc_coseg --reader pascal_voc
  cosegkit train --dataset composite --root ../shared/data/pascal_voc_coseg --reader pascal_voc \
      --clip-model coseg-composite-clip --clip-pretrained PATH_PRINTED_ABOVE ...

  cosegkit pretrain-clip --dataset synthetic --steps 600     # the demo's CLIP

  # SegCLIP (a ViT grouping its patches into centres) on the same captions and budget; prints its folder
  cosegkit pretrain-clip --method segclip --dataset synthetic
  cosegkit pretrain-clip --method segclip --dataset synthetic --reconstruction-weight 0
""",
    )
    d = p.add_argument_group("world")
    d.add_argument(
        "--dataset", choices=("synthetic", "composite"), default="composite", help="the world (default composite)"
    )
    d.add_argument("--root", help="composite: the folder of the masked photos")
    d.add_argument("--coco-images", help="composite of coco: the image folder")
    d.add_argument("--classes", nargs="+", metavar="GROUP", help="composite: use these groups of --root only")
    _add_world_options(d)
    _add_reader_options(d)
    d.add_argument("--image-size", type=_positive, default=64, help="side of the world's images (default 64)")
    r = p.add_argument_group(
        "recipe (defaults: cosegkit.engine.pretrain.COMPOSITE_RECIPE, or the synthetic CLIP's; for segclip "
        "cosegkit.engine.segclip_pretrain.SEGCLIP_COMPOSITE_RECIPE or SEGCLIP_SYNTHETIC_RECIPE, the same budgets)"
    )
    r.add_argument(
        "--method",
        choices=("clip", "segclip"),
        default="clip",
        help="clip: a small open_clip CLIP (default); segclip: SegCLIP's grouping ViT and text tower",
    )
    r.add_argument("--steps", type=_positive, help="optimizer steps")
    r.add_argument("--batch-size", type=_positive, help="image-caption pairs per step (at least 2)")
    r.add_argument("--lr", type=float, help="peak learning rate")
    r.add_argument("--seed", type=int, default=0, help="initialisation and data seed (default 0)")
    r.add_argument("--no-cache", action="store_true", help="train even when cached weights exist (and replace them)")
    r.add_argument(
        "--superpixel-weight", type=float, help="segclip: weight of the superpixel loss (default 1; 0 switches it off)"
    )
    r.add_argument(
        "--reconstruction-weight",
        type=float,
        help="segclip: weight of the masked-patch reconstruction loss (default 1; 0 switches it off)",
    )
    a = p.add_argument_group("accuracy on held-out sets")
    a.add_argument("--sets", type=_positive, default=50, help="held-out sets scored (default 50)")
    a.add_argument("--set-size", type=_positive, default=5, help="images per held-out set (default 5)")
    a.add_argument("--json", help="also write the weights file and the accuracy to this JSON file")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pretrain_clip)


def _cmd_pretrain_clip(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cosegkit.clip import FrozenClip
    from cosegkit.engine.config import TrainConfig
    from cosegkit.engine.pretrain import (
        COMPOSITE_RECIPE,
        SYNTHETIC_TEMPLATES,
        ClipPretrainConfig,
        pretrain_clip,
        register_composite_clip,
        register_synthetic_clip,
        zero_shot_accuracy,
    )
    from cosegkit.errors import CosegValueError

    config = TrainConfig(
        dataset=args.dataset,
        root=args.root,
        reader=args.reader,
        held_out=args.held_out,
        split_seed=args.split_seed,
        coco_images=args.coco_images,
        classes=args.classes,
        world_classes=args.world_classes,
        world_seed=args.world_seed,
        world_objects=_world_objects(args.world_objects),
        missing_masks=args.missing_masks,
        on_empty=args.on_empty,
        image_size=args.image_size,
    )
    segclip_flags = [
        flag
        for flag, name in (
            ("--superpixel-weight", "superpixel_weight"),
            ("--reconstruction-weight", "reconstruction_weight"),
        )
        if getattr(args, name) is not None
    ]
    if args.method == "clip" and segclip_flags:
        raise _UsageError(f"{', '.join(segclip_flags)}: only with --method segclip (they weight SegCLIP's losses)")
    changes = {k: getattr(args, k) for k in ("steps", "batch_size", "lr") if getattr(args, k) is not None}
    if args.method == "segclip":
        from cosegkit.engine.segclip_pretrain import SEGCLIP_COMPOSITE_RECIPE, SEGCLIP_SYNTHETIC_RECIPE

        recipe = SEGCLIP_COMPOSITE_RECIPE if args.dataset == "composite" else SEGCLIP_SYNTHETIC_RECIPE
        changes.update(
            {
                k: getattr(args, k)
                for k in ("superpixel_weight", "reconstruction_weight")
                if getattr(args, k) is not None
            }
        )
    else:
        recipe = COMPOSITE_RECIPE if args.dataset == "composite" else ClipPretrainConfig().recipe()
    try:
        recipe = replace(recipe, seed=args.seed, **changes)
    except CosegValueError as err:  # name the flag: "SegClipRecipe.lr must ..." -> "--lr: ..."
        text = str(err)
        for name in ("superpixel_weight", "reconstruction_weight", "batch_size", "steps", "lr"):
            if name in text:
                raise _UsageError(f"--{name.replace('_', '-')}: {text}") from None
        raise
    world = config.world()  # the training photos only
    held = config.held_out_world()
    print(
        f"{args.dataset} world: {world.num_classes} classes, {args.image_size} px"
        + (
            f", {len(world.photos)} training photos ({len(held.photos)} held out)"
            if args.dataset == "composite"
            else ""
        )
    )
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, desc=f"pretrain-{args.method}", unit="step", dynamic_ncols=True)

    def progress(step: int, steps: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

    where = "held-out photos" if args.dataset == "composite" else "held-out seeds"
    if args.method == "segclip":
        return _pretrain_segclip(args, world, held, recipe, progress, bar, where)
    try:
        path = pretrain_clip(world, recipe, cache=not args.no_cache, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    (register_composite_clip if args.dataset == "composite" else register_synthetic_clip)()
    clip = FrozenClip.from_name(
        recipe.architecture, pretrained=str(path), classnames=world.class_names, templates=SYNTHETIC_TEMPLATES
    )
    scores = zero_shot_accuracy(clip, held, sets=args.sets, set_size=args.set_size)
    print(f"weights: {path}")
    _print_naming_accuracy(args, scores, where)
    data = f"--dataset {args.dataset}" + (f" --root {args.root} --reader {args.reader}" if args.root else "")
    print(f"train with it: cosegkit train {data} --clip-model {recipe.architecture} --clip-pretrained {path} ...")
    if args.json:
        destination = Path(args.json)
        destination.parent.mkdir(parents=True, exist_ok=True)
        record = {"weights": str(path), "architecture": recipe.architecture, "world": world.fingerprint(), **scores}
        destination.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="co-segment photos in the browser (needs the app extra: Gradio)",
        formatter_class=_FORMATTER,
        description="Serve a page where a set of photos is co-segmented by a trained model or zero-shot with a "
        "CLIP: it shows the masks over the photos, the class the set was found to share with its score, and "
        "offers the masks as a zip of PNGs (the files 'cosegkit segment --out' writes). The --model entries "
        "fill the page's model list (a run folder whose CLIP weights are a file here also adds zero-shot with "
        "that CLIP); the page takes other folders or hub names too. Nothing is fetched from the network "
        "unless a model or CLIP must be downloaded, or --share asks for a public link. "
        'Needs Gradio: pip install "cosegkit[app]".',
        epilog="""examples:
  cosegkit app --model cosegkit-demo/lcco --model cosegkit-demo/baseline   # after 'cosegkit demo'
  cosegkit app --model runs/pascal --model org/lcco-voc --port 8080
  cosegkit app --clip-model ViT-B-16 --clip-pretrained openai --vocabulary names.txt   # zero-shot only
  cosegkit app --model runs/pascal --host 0.0.0.0                             # reachable from other machines
""",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="RUN|FOLDER|ORG/NAME",
        help="a run folder, model folder or hub name for the model list (repeat for several)",
    )
    p.add_argument("--clip-model", metavar="NAME", help="zero-shot: open_clip architecture (default ViT-B-16)")
    p.add_argument(
        "--clip-pretrained", metavar="TAG|FILE", help="zero-shot: open_clip tag, weights file, or none (default openai)"
    )
    p.add_argument(
        "--vocabulary",
        nargs="+",
        metavar="FILE|NAME",
        help="zero-shot: class names, or files of one name per line (default: cosegkit.clip.DEFAULT_VOCABULARY)",
    )
    p.add_argument("--templates", nargs="+", metavar="T", help="zero-shot: prompt templates with one '{}'")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=_positive, default=None, help="port (default: the first free one from 7860)")
    p.add_argument(
        "--share", action="store_true", help="also ask Gradio for a public share link (off by default; needs network)"
    )
    p.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:1, ...")
    p.set_defaults(func=_cmd_app)


def _app_model(value: str) -> str:
    """--model for the app: a model or run folder here, or a hub name ORG/NAME (fetched when picked)."""
    import re

    path = Path(value)
    if path.exists():
        _model_folder(value)  # refuses a folder without config.json
        return value
    if re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not value.startswith((".", "/")):
        print(f"cosegkit app: --model {value}: no such folder here, taken as a hub name (fetched when picked)")
        return value
    raise _UsageError(
        f"--model {value!r}: no such folder, and not a hub name ORG/NAME; pass a cosegkit train run folder, "
        f"a save_pretrained folder or a hub name"
    )


def _cmd_app(args: argparse.Namespace) -> int:
    try:
        from cosegkit.app import require_gradio

        require_gradio()
    except ModuleNotFoundError as err:
        raise _UsageError(str(err)) from None
    models = [_app_model(m) for m in args.model]
    if len(set(models)) != len(models):
        raise _UsageError(f"--model names the same model twice: {models}")
    if args.vocabulary or args.templates:
        from types import SimpleNamespace

        from cosegkit.zeroshot import CLIP_ES_TEMPLATES

        names, templates = _prompt_settings(
            SimpleNamespace(vocabulary=args.vocabulary, templates=args.templates, class_name=None), CLIP_ES_TEMPLATES
        )
    else:
        names, templates = None, None
    from cosegkit.app import build_app, example_sets, launch_app, model_choices
    from cosegkit.engine.distributed import setup
    from cosegkit.engine.pretrain import cache_folder

    device = setup(args.device).device
    pretrained = _none_or_str(args.clip_pretrained) if args.clip_pretrained is not None else "openai"
    choices = model_choices(
        models, clip_model=args.clip_model, clip_pretrained=pretrained, classnames=names, templates=templates
    )
    examples = example_sets(cache_folder() / "app-examples") if any(c.demo for c in choices.values()) else []
    print(f"cosegkit app: {len(choices)} entries in the model list: " + "; ".join(choices))
    launch_app(build_app(choices, examples=examples, device=device), host=args.host, port=args.port, share=args.share)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cosegkit`` command."""
    from cosegkit import __version__

    parser = argparse.ArgumentParser(
        prog="cosegkit",
        description="Image co-segmentation with LCCo: train, evaluate, segment, export, share on the hub, and a CPU demo.",
        formatter_class=_FORMATTER,
        epilog="""examples:
  cosegkit demo
  cosegkit train --dataset pascal_voc --root data/pascal_voc_coseg --out runs/pascal
  cosegkit evaluate --model runs/pascal/model --data icoseg=data/icoseg
  cosegkit segment --model runs/pascal/model photos/ --out masks/
  cosegkit segment --zero-shot --clip-model ViT-B-16 --clip-pretrained openai photos/ --out masks/
  cosegkit export --model runs/pascal/model --out lcco.onnx --set-size 5 --image-size 224
  cosegkit push --model runs/pascal --repo my-lab/lcco-pascal
  cosegkit pretrain-clip --dataset composite --root data/pascal_voc_coseg --reader pascal_voc
  cosegkit plot runs/pascal runs/icoseg --out curves.png
Run 'cosegkit COMMAND --help' for a command's options.""",
    )
    parser.add_argument("--version", action="version", version=f"cosegkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_segment(sub)
    _add_export(sub)
    _add_push(sub)
    _add_pretrain_clip(sub)
    _add_plot(sub)
    _add_app(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cosegkit`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from cosegkit.engine.checkpoint import CheckpointError
    from cosegkit.engine.trainer import TrainingDiverged, TrainingInterrupted
    from cosegkit.errors import CosegError, WeightsUnavailableError

    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as err:
        print(f"cosegkit {args.command}: {err}", file=sys.stderr)
        return 130
    except TrainingDiverged as err:
        print(f"cosegkit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (_UsageError, CosegError, CheckpointError, WeightsUnavailableError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"cosegkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

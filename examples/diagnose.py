"""Does a trained LCCo use its set? Print what each set-aware module contributes, for any run folder.

For a ``cosegkit train`` run folder, on held-out sets of the run's own evaluation data, for a
freshly initialised model (``init``), every kept checkpoint and the final model:

- set sensitivity: how much image 0's features change, at the input and output of each module
  and at the mask logits, when the other images of its set are swapped for images of other
  sets (0 for a single-image model; a module that uses the set raises it from in to out);
- gradient norms reaching each part of the model on one training batch;
- class choices: how often i* (eq. 6), the top-K (eq. 3-5), CLIP's argmax of sigma and
  eq. (12)'s target name the set's class (the true class on the synthetic world, eq. (12)'s
  target elsewhere), and the coarse mask's J on CLIP's patch grid;
- the agreement of i* and the top-K with eq. (12)'s target logged during training.

    python examples/diagnose.py cosegkit-demo/lcco
    python examples/diagnose.py runs/pascal --sets 16 --no-checkpoints --json diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a cosegkit train run folder (with config.json)")
    parser.add_argument("--sets", type=int, default=32, help="held-out sets to measure on (default 32)")
    parser.add_argument("--no-checkpoints", action="store_true", help="measure only init and the final model")
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args()

    from cosegkit.diagnostics import diagnose_run, format_report

    report = diagnose_run(args.run, sets=args.sets, checkpoints=not args.no_checkpoints)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

"""``python -m cosegkit``: the ``cosegkit`` command."""

from cosegkit.cli import main

raise SystemExit(main())

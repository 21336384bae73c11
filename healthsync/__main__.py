"""``python -m healthsync`` is the same as the ``healthsync`` command."""

from healthsync.cli import main

raise SystemExit(main())

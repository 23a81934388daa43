"""``python -m carcrawl.sandbox``: the sandbox web in the foreground."""

from carcrawl.sandbox.process import main

raise SystemExit(main())

"""``python -m expertgraph.orchestrator.cli``: the same as the ``expertgraph`` command."""

from expertgraph.orchestrator.cli._main import main

raise SystemExit(main())

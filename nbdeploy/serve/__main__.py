"""``python -m nbdeploy.serve --model-repository DIR [...]``: see ``server.parse_args``."""

from .server import main

raise SystemExit(main())

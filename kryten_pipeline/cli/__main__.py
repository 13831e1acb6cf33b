"""``python -m kryten_pipeline.cli``: the installed ``kryten-pipeline`` command."""

import sys

from kryten_pipeline.cli.app import main

sys.exit(main())

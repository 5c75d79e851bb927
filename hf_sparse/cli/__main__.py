"""``python -m hf_sparse.cli`` is the ``hf-sparse`` command."""

import sys

from . import main

sys.exit(main())

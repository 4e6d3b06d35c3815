"""``python -m hpcore.slurm list|render ...``: see :mod:`hpcore.slurm.render`."""

from .render import main

raise SystemExit(main())

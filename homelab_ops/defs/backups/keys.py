"""Asset keys of what is backed up (dumps and the PITR cluster), in one place: assets, jobs,
checks and sensors all name them.

The first part is the step (`backups`, `restore_verification`, `backup_retention`, `offsite`): jobs
and selections pick a step by it. The last part names the thing and the step (`n8n_backup`), because
the lineage graph titles each box with the last part alone, and four boxes titled `n8n` told the
owner nothing.
"""

from collections.abc import Callable

import dagster as dg


def _keys(step: str, last: str) -> Callable[[str], dg.AssetKey]:
    """The key of `step` for a thing called `name`: `<step>/<name>_<last>`."""
    return lambda name: dg.AssetKey([step, f"{name}_{last}"])


backup = _keys("backups", "backup")
verification = _keys("restore_verification", "verification")
retention = _keys("backup_retention", "retention")
offsite = _keys("offsite", "offsite")
base_backup = _keys("base_backups", "base_backup")  # a PITR cluster's
pitr_verification = _keys("pitr_verification", "pitr_verification")

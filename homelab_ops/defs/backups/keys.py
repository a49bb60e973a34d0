"""Asset keys of what is backed up (dumps and the PITR cluster), in one place because jobs, checks and the CLI all name them.

The first part is the step (`backups`, `restore_verification`, `backup_retention`, `offsite`): jobs
and selections pick a step by it. The last part names the thing and the step (`n8n_backup`), because
the lineage graph titles each box with the last part alone, and four boxes titled `n8n` told the
owner nothing.
"""

import dagster as dg


def backup(name: str) -> dg.AssetKey:
    return dg.AssetKey(["backups", f"{name}_backup"])


def verification(name: str) -> dg.AssetKey:
    return dg.AssetKey(["restore_verification", f"{name}_verification"])


def retention(name: str) -> dg.AssetKey:
    return dg.AssetKey(["backup_retention", f"{name}_retention"])


def offsite(name: str) -> dg.AssetKey:
    return dg.AssetKey(["offsite", f"{name}_offsite"])


def base_backup(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["base_backups", f"{cluster}_base_backup"])


def pitr_verification(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["pitr_verification", f"{cluster}_pitr_verification"])

"""What n8n saw against what the backup holds: workflows by node count and hash, credentials by
keyed hash of their decrypted values. Pure functions over plain data; no value leaves them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


def _canon(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def node_key(node: dict) -> str:
    return str(node.get("id") or node.get("name") or "")


def workflow_digest(wf: dict) -> dict:
    """Name, node count, a hash of nodes + connections, and each node's parameters hash.

    `active` and timestamps are left out: verification deactivates the scratch copy, and an
    export stamps its own times."""
    nodes = wf.get("nodes")
    if isinstance(nodes, str):  # an export may carry the column as text
        try:
            nodes = json.loads(nodes)
        except ValueError:
            nodes = None
    conns = wf.get("connections")
    if isinstance(conns, str):
        try:
            conns = json.loads(conns)
        except ValueError:
            conns = None
    valid = isinstance(nodes, list) and all(isinstance(n, dict) for n in nodes)
    params = {node_key(n): hashlib.sha256(_canon(n.get("parameters"))).hexdigest()[:16]
              for n in nodes} if valid else {}
    return {
        "name": str(wf.get("name", "")),
        "nodes": len(nodes) if valid else -1,
        "hash": hashlib.sha256(_canon({"nodes": nodes, "connections": conns})).hexdigest()[:16],
        "params": params,
        "valid": valid and isinstance(conns, dict),
    }


def digests(workflows: list[dict]) -> dict[str, dict]:
    return {str(w.get("id")): workflow_digest(w) for w in workflows}


@dataclass
class WorkflowRow:
    workflow: str
    id: str
    expected_nodes: int
    loaded_nodes: int
    ok: bool
    problem: str = ""


def compare_workflows(expected: dict[str, dict], loaded: dict[str, dict], *,
                      by_parameters: bool = False) -> list[WorkflowRow]:
    """One row per workflow on either side; a missing, unloadable or changed workflow is not ok.

    `by_parameters` (the upgrade check) names the nodes whose parameters changed rather than
    comparing one hash: an upgrade may legitimately add fields n8n fills in itself."""
    rows = []
    for wid in sorted(expected.keys() | loaded.keys()):
        e, a = expected.get(wid), loaded.get(wid)
        name = (e or a)["name"]
        if e is None:
            rows.append(WorkflowRow(name, wid, -1, a["nodes"], False, "not in the backup"))
            continue
        if a is None:
            rows.append(WorkflowRow(name, wid, e["nodes"], -1, False, "n8n did not load it"))
            continue
        problem = ""
        if not e["valid"] or not a["valid"]:
            problem = "its nodes or connections are not valid workflow JSON"
        elif e["nodes"] != a["nodes"]:
            problem = f"{e['nodes']} nodes in the backup, {a['nodes']} loaded"
        elif by_parameters:
            changed = sorted(k for k in e["params"] if a["params"].get(k) != e["params"][k])
            if changed:
                problem = f"parameters changed in node(s) {', '.join(changed[:5])}"
        elif e["hash"] != a["hash"]:
            problem = "nodes or connections differ from the backup"
        rows.append(WorkflowRow(name, wid, e["nodes"], a["nodes"], not problem, problem))
    return rows


@dataclass
class CredentialRow:
    credential: str
    id: str
    type: str
    decrypted: bool
    matches: bool | None  # None: nothing to compare with
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.decrypted and self.matches is not False


def compare_credentials(stored: list[dict], expected_hashes: dict[str, str | None],
                        decrypted_hashes: dict[str, str | None]) -> list[CredentialRow]:
    """`stored`: id, name, type of every credential row; `expected_hashes`: what an independent
    decryption gave (None: it could not); `decrypted_hashes`: what n8n gave (None: not decrypted)."""
    rows = []
    for c in stored:
        cid = str(c["id"])
        got = decrypted_hashes.get(cid)
        want = expected_hashes.get(cid)
        if got is None:
            rows.append(CredentialRow(c["name"], cid, c["type"], False, None, "n8n could not decrypt it"))
        elif want is None:
            rows.append(CredentialRow(c["name"], cid, c["type"], True, None))
        else:
            same = got == want
            rows.append(CredentialRow(c["name"], cid, c["type"], True, same,
                                      "" if same else "decrypted to a different value"))
    return rows


@dataclass
class Verdict:
    workflows: list[WorkflowRow] = field(default_factory=list)
    credentials: list[CredentialRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # not tied to one workflow or credential

    @property
    def failed_workflows(self) -> list[WorkflowRow]:
        return [w for w in self.workflows if not w.ok]

    @property
    def failed_credentials(self) -> list[CredentialRow]:
        return [c for c in self.credentials if not c.ok]

    @property
    def passed(self) -> bool:
        return not (self.problems or self.failed_workflows or self.failed_credentials)

    def summary(self) -> str:
        if self.passed:
            return (f"n8n loaded all {len(self.workflows)} workflows unchanged and decrypted all "
                    f"{len(self.credentials)} credentials")
        parts = list(self.problems)
        if self.failed_workflows:
            parts.append(f"{len(self.failed_workflows)} of {len(self.workflows)} workflows failed: "
                         + "; ".join(f"{w.workflow} ({w.problem})" for w in self.failed_workflows[:10]))
        if self.failed_credentials:
            parts.append(f"{len(self.failed_credentials)} of {len(self.credentials)} credentials failed: "
                         + "; ".join(f"{c.credential} ({c.problem})" for c in self.failed_credentials[:10]))
        return "; ".join(parts)

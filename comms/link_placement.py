"""Link-aware rank placement after Holmes: groups that communicate most stay inside one link class.

Holmes (Yang et al., "Holmes: Towards Distributed Training Across Clusters with
Heterogeneous NIC Environment", arXiv:2312.03549) trains across clusters whose nodes
have different NICs (InfiniBand, RoCE, plain Ethernet): the data-parallel groups, whose
allreduce moves the most bytes, are placed on nodes of one NIC type, and only the
lighter pipeline traffic crosses between types. Here: given each node's link class
(detected from sysfs or declared), :func:`link_aware_order` orders the ranks so that each
group of ``group_size`` consecutive new ranks lies inside one class wherever the counts
allow (the fewest groups that must span classes), keeping a node's ranks together;
:func:`reorder` makes the communicator with that order, on which a
:class:`comms.Hierarchy` with a level of ``group_size`` puts its rings inside one class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from hpcore.boundary import agree
from hpcore.errors import MismatchError

__all__ = ["detect_link_class", "link_classes", "Placement", "link_aware_order", "identity_placement", "reorder"]


def detect_link_class(sysfs_root: str = "/sys") -> str:
    """This node's fastest network link class, from sysfs. Not collective.

    ``"infiniband"`` or ``"roce"`` for an ACTIVE port of an RDMA device under
    ``class/infiniband`` (its ``link_layer`` says InfiniBand or Ethernet), ``"slingshot"``
    for an HPE Slingshot device under ``class/cxi``, else ``"ethernet"``.
    """
    found = set()
    ib = os.path.join(sysfs_root, "class", "infiniband")
    if os.path.isdir(ib):
        for dev in sorted(os.listdir(ib)):
            ports = os.path.join(ib, dev, "ports")
            if not os.path.isdir(ports):
                continue
            for port in sorted(os.listdir(ports)):
                state = _read(os.path.join(ports, port, "state"))
                if state is not None and "ACTIVE" not in state.upper():
                    continue
                layer = (_read(os.path.join(ports, port, "link_layer")) or "").strip().lower()
                if layer == "infiniband":
                    found.add("infiniband")
                elif layer == "ethernet":
                    found.add("roce")
    cxi = os.path.join(sysfs_root, "class", "cxi")
    if os.path.isdir(cxi) and os.listdir(cxi):
        found.add("slingshot")
    for cls in ("slingshot", "infiniband", "roce"):
        if cls in found:
            return cls
    return "ethernet"


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def link_classes(comm, link_class: Optional[str] = None, ranks_per_node=None, *, sysfs_root: str = "/sys",
                 environ: Optional[Mapping[str, str]] = None) -> tuple:
    """Every rank's node and every node's link class: ``(node_of, class_of_node)``.

    Collective on ``comm``. ``link_class``: this rank's class as declared (e.g. from the job
    script), else :func:`detect_link_class`. Nodes as :class:`hpcore.topology.Topology`
    finds them (``ranks_per_node`` for virtual nodes). Ranks of one node that declare
    different classes raise the same ``ValueError`` on every rank. The result is equal on
    every rank.
    """
    from hpcore.topology import Topology

    error, mine = None, None
    try:
        if link_class is not None and (not isinstance(link_class, str) or not link_class):
            raise TypeError(f"link_class: expected None or a non-empty str, got {link_class!r}")
        mine = link_class if link_class is not None else detect_link_class(sysfs_root)
    except Exception as exc:  # noqa: BLE001 - agreed on below
        error = exc
    agree(comm, error)
    with Topology(comm, ranks_per_node=ranks_per_node, environ=environ) as topo:
        nodes = [list(n) for n in topo.nodes]
    classes = comm.allgather(mine)
    node_of = [0] * comm.Get_size()
    class_of_node = []
    for n, ranks in enumerate(nodes):
        for r in ranks:
            node_of[r] = n
        seen = sorted({classes[r] for r in ranks})
        if len(seen) > 1:
            raise ValueError(f"link_class: ranks {ranks} of node {n} declare different classes {seen}; "
                             "a node has one link class")
        class_of_node.append(seen[0])
    return node_of, class_of_node


@dataclass(frozen=True)
class Placement:
    """A rank order: ``order[new_rank] = old_rank``; groups are ``group_size`` consecutive new ranks.

    Attributes
    ----------
    order : tuple of int
    group_size : int
    group_classes : tuple of tuple of str
        The link classes each group's ranks sit on (one class: the group stays inside it).
    group_nodes : tuple of int
        How many nodes each group touches.
    """

    order: tuple
    group_size: int
    group_classes: tuple
    group_nodes: tuple

    @property
    def spanning(self) -> int:
        """Groups whose ranks sit on more than one link class."""
        return sum(1 for c in self.group_classes if len(c) > 1)

    def new_rank(self, old_rank: int) -> int:
        """Where ``old_rank`` goes."""
        return self.order.index(old_rank)

    def slowest_group_bandwidth(self, bandwidth_Bps: Mapping[str, float], cross_Bps: float) -> float:
        """The bandwidth [bytes/s] of the slowest group's ring: a group inside one class runs at
        that class's bandwidth, a group spanning classes at ``cross_Bps`` (the link between
        them) or its slowest class, whichever is lower."""
        worst = float("inf")
        for classes in self.group_classes:
            bw = min(bandwidth_Bps[c] for c in classes)
            if len(classes) > 1:
                bw = min(bw, cross_Bps)
            worst = min(worst, bw)
        return worst

    def allreduce_time(self, nbytes: float, bandwidth_Bps: Mapping[str, float], cross_Bps: float,
                       alpha_s: float = 0.0) -> float:
        """Alpha-beta time [s] of a ring allreduce of ``nbytes`` inside every group at once
        (the slowest group decides)."""
        g = self.group_size
        if g == 1:
            return 0.0
        bw = self.slowest_group_bandwidth(bandwidth_Bps, cross_Bps)
        return 2 * (g - 1) * (alpha_s + nbytes / g / bw)


def _check(node_of: Sequence[int], class_of_node: Sequence[str], group_size: int) -> None:
    size = len(node_of)
    if size < 1:
        raise ValueError("node_of: expected at least one rank")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected an int >= 1, got {group_size!r}")
    if size % group_size:
        raise ValueError(f"group_size: {group_size} does not divide the {size} ranks")
    for r, n in enumerate(node_of):
        if not 0 <= n < len(class_of_node):
            raise ValueError(f"node_of[{r}]: node {n} has no entry in class_of_node (of {len(class_of_node)} nodes)")


def _describe(order, node_of, class_of_node, group_size) -> Placement:
    classes, nodes = [], []
    for start in range(0, len(order), group_size):
        grp = order[start:start + group_size]
        classes.append(tuple(sorted({class_of_node[node_of[r]] for r in grp})))
        nodes.append(len({node_of[r] for r in grp}))
    return Placement(tuple(order), group_size, tuple(classes), tuple(nodes))


def identity_placement(node_of: Sequence[int], class_of_node: Sequence[str], group_size: int) -> Placement:
    """The placement of the ranks as they are (``order[i] = i``), for comparison. Not collective."""
    _check(node_of, class_of_node, group_size)
    return _describe(list(range(len(node_of))), node_of, class_of_node, group_size)


def link_aware_order(node_of: Sequence[int], class_of_node: Sequence[str], group_size: int) -> Placement:
    """Order ranks so that groups of ``group_size`` consecutive new ranks stay inside one link class.

    Not collective: pure, equal on every rank for equal arguments.

    Nodes are taken class by class (classes in order of first appearance, nodes in their
    order), a node's ranks kept together in rank order; each class fills
    ``n_c // group_size`` groups of its own. The ranks left over (``n_c % group_size`` per
    class) fill the remaining groups, largest remainders first so that a spanning group
    touches few classes. No placement has fewer spanning groups: class ``c`` can fill at
    most ``n_c // group_size`` groups alone.

    Parameters
    ----------
    node_of : sequence of int
        The node of every (old) rank.
    class_of_node : sequence of str
        The link class of every node.
    group_size : int
        Ranks per heavily communicating group (a data-parallel group, a hierarchy level).
    """
    _check(node_of, class_of_node, group_size)
    by_class: dict = {}
    for node in range(len(class_of_node)):
        ranks = [r for r, n in enumerate(node_of) if n == node]
        if ranks:
            by_class.setdefault(class_of_node[node], []).extend(ranks)
    pure, leftovers = [], []
    for cls, ranks in by_class.items():
        full = len(ranks) // group_size * group_size
        pure.extend(ranks[:full])
        if full < len(ranks):
            leftovers.append(ranks[full:])
    leftovers.sort(key=len, reverse=True)
    order = pure + [r for part in leftovers for r in part]
    return _describe(order, node_of, class_of_node, group_size)


def reorder(comm, placement: Placement):
    """A new communicator whose rank ``i`` is ``comm``'s rank ``placement.order[i]``.

    Collective on ``comm`` (one ``Split``); every rank passes the same placement (checked:
    a different one raises the same ``ValueError`` on every rank). The caller frees the
    result.
    """
    error = None
    try:
        if not isinstance(placement, Placement):
            raise TypeError(f"placement: expected a Placement, got {type(placement).__name__}")
        if sorted(placement.order) != list(range(comm.Get_size())):
            raise ValueError(f"placement: order is not a permutation of the {comm.Get_size()} ranks of comm")
    except Exception as exc:  # noqa: BLE001 - agreed on below
        error = exc
    try:
        agree(comm, error, what="reorder", order=None if error is not None else placement.order)
    except MismatchError:
        raise ValueError("reorder: ranks passed different placements") from None
    return comm.Split(0, placement.new_rank(comm.Get_rank()))

"""hpcore.boundary on one rank: communicator resolution, op names, normalization, local errors."""

import json

import numpy as np
import pytest
from mpi4py import MPI

import hpcore
from hpcore import boundary


def test_as_comm_accepts_mpi_and_hpcore_comm():
    assert hpcore.as_comm(MPI.COMM_SELF) is MPI.COMM_SELF
    assert hpcore.as_comm(MPI.COMM_WORLD) is MPI.COMM_WORLD
    wrapped = hpcore.Comm(MPI.COMM_SELF)
    assert hpcore.as_comm(wrapped) is MPI.COMM_SELF


@pytest.mark.parametrize("bad", [None, 3, "world", object(), np.zeros(2)], ids=repr)
def test_as_comm_rejects_other_objects(bad):
    with pytest.raises(TypeError, match="comm: expected an mpi4py intracommunicator"):
        hpcore.as_comm(bad)


def test_as_comm_rejects_comm_null():
    with pytest.raises(ValueError, match="COMM_NULL"):
        hpcore.as_comm(MPI.COMM_NULL)


def test_as_comm_is_the_rule_everywhere():
    """Topology, CartDecomposition, Hierarchy and the ring take the same objects (issue 14)."""
    from comms import CartDecomposition, Hierarchy, ring_allreduce
    from hpcore.topology import Topology

    for comm in (MPI.COMM_SELF, hpcore.Comm(MPI.COMM_SELF)):
        assert Topology(comm).size == 1
        CartDecomposition(comm, (4, 4)).free()
        Hierarchy(comm, levels=[1])
        assert ring_allreduce(comm, np.arange(3.0)).tolist() == [0.0, 1.0, 2.0]
    for api in (lambda c: Topology(c), lambda c: CartDecomposition(c, (4,)), lambda c: Hierarchy(c, levels=[1]),
                lambda c: ring_allreduce(c, np.zeros(2))):
        with pytest.raises(TypeError, match="comm: expected an mpi4py intracommunicator"):
            api(42)


@pytest.mark.parametrize("op,name", [(None, "sum"), ("sum", "sum"), ("PROD", "prod"), ("Max", "max"), ("min", "min"),
                                     (MPI.SUM, "sum"), (MPI.PROD, "prod"), (MPI.MAX, "max"), (MPI.MIN, "min")],
                         ids=str)
def test_as_op(op, name):
    assert hpcore.as_op(op) == name


@pytest.mark.parametrize("op,shown", [("mean", "'mean'"), (MPI.BAND, "MPI.BAND"), (MPI.MAXLOC, "MPI.MAXLOC"),
                                      (3, "int 3")], ids=str)
def test_as_op_rejects(op, shown):
    with pytest.raises(ValueError, match=f"op: expected .* got {shown}"):
        hpcore.as_op(op)


def test_normalize():
    n = boundary.normalize
    assert n(np.dtype("float64")) == "float64" == n(np.float64)
    assert n(np.dtype(">f8")) == ">f8"
    assert n([1, (2, np.int64(3))]) == (1, (2, 3))
    assert n(np.array([[1, 2], [3, 4]])) == ((1, 2), (3, 4))
    assert n({"b": 1, "a": [2]}) == (("a", (2,)), ("b", 1))
    assert n(MPI.MAX) == "max"
    assert n(None) is None and n(True) is True and n("x") == "x"
    assert type(n(np.float32(1.5))) is float


def test_digest_equal_for_equal_fields():
    d = boundary._digest
    a = {"n": 3, "dtype": "float64"}
    b = {"dtype": "float64", "n": 3}
    assert d("x", a) == d("x", b)
    assert d("x", a) != d("y", a)
    assert d("x", a) != d("x", {"n": 4, "dtype": "float64"})
    assert 0 <= d("x", a) < 2**63
    assert d("", {}) == 0


def test_agree_passes_and_raises_on_one_rank():
    hpcore.agree(MPI.COMM_SELF, None)
    hpcore.agree(MPI.COMM_SELF, what="f", n=3, shape=(2, 2), dtype=np.dtype("f4"))
    with pytest.raises(ValueError, match=r"^rank 0/1: bad$") as info:
        hpcore.agree(MPI.COMM_SELF, ValueError("bad"))
    assert isinstance(info.value.__cause__, ValueError)


def test_agree_rebuilds_types_whose_constructor_needs_more_arguments():
    """JSONDecodeError(msg, doc, pos): re-raised as its nearest base that takes a message (issue 14)."""
    try:
        json.loads("{not json")
    except json.JSONDecodeError as exc:
        err = exc
    with pytest.raises(ValueError, match="rank 0/1: Expecting property name") as info:
        hpcore.agree(MPI.COMM_SELF, err)
    assert type(info.value) is ValueError
    with pytest.raises(ValueError) as info:
        hpcore.agree(MPI.COMM_SELF, UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    assert type(info.value) is UnicodeError and "invalid start byte" in str(info.value)


def test_agree_local_exception_classes_fall_back_to_an_importable_base():
    class LocalError(KeyError):
        pass

    with pytest.raises(KeyError) as info:
        hpcore.agree(MPI.COMM_SELF, LocalError("k"))
    assert type(info.value) is KeyError


def test_agree_keeps_importable_types():
    for exc in (TypeError("t"), KeyError("k"), OSError("o"), hpcore.HpcoreError("h"), hpcore.MismatchError("m")):
        with pytest.raises(type(exc)) as info:
            hpcore.agree(MPI.COMM_SELF, exc)
        assert type(info.value) is type(exc)


def test_agree_field_that_cannot_be_normalized_is_an_error():
    class Bad:
        def __repr__(self):
            raise RuntimeError("no repr")

    with pytest.raises(RuntimeError, match="no repr"):
        hpcore.agree(MPI.COMM_SELF, what="f", x=Bad())


def test_agree_rejects_a_non_exception_error():
    with pytest.raises(TypeError, match="error: expected an exception or None"):
        hpcore.agree(MPI.COMM_SELF, "oops")


def test_errors_module_keeps_its_names():
    from hpcore.errors import agree, check

    assert agree is hpcore.agree
    check(MPI.COMM_SELF, lambda: None)
    with pytest.raises(ValueError, match="rank 0/1: no"):
        check(MPI.COMM_SELF, lambda: (_ for _ in ()).throw(ValueError("no")))
    assert issubclass(hpcore.MismatchError, hpcore.HpcoreError)


def test_ranges():
    assert boundary._ranges([3]) == "rank 3"
    assert boundary._ranges([0, 1, 2, 5, 7, 8]) == "ranks 0-2, 5, 7-8"


@pytest.mark.parametrize("bad", ["op", "complex-max", "bool", "byteswapped", "out-shape", "out-dtype", "out-readonly",
                                 "not-array"])
def test_ring_and_hierarchy_reject_the_same_input_alike(bad):
    """Issue 14: the op/dtype/out checks of comms.ring and comms.Hierarchy are one set of checks."""
    from comms import Hierarchy, ring_allreduce

    x, op, out = np.ones(4), None, None
    if bad == "op":
        op = MPI.BAND
    elif bad == "complex-max":
        x, op = np.ones(4, complex), "max"
    elif bad == "bool":
        x = np.ones(4, bool)
    elif bad == "byteswapped":
        x = np.ones(4, ">f8")
    elif bad == "out-shape":
        out = np.ones(3)
    elif bad == "out-dtype":
        out = np.ones(4, np.float32)
    elif bad == "out-readonly":
        out = np.ones(4)
        out.flags.writeable = False
    else:
        x = [1.0, 2.0]
    with pytest.raises((TypeError, ValueError)) as ring_error:
        ring_allreduce(MPI.COMM_SELF, x, op, out)
    with Hierarchy(MPI.COMM_SELF, levels=[1]) as h:
        with pytest.raises((TypeError, ValueError)) as hierarchy_error:
            h.allreduce(x, op, out)
    assert type(ring_error.value) is type(hierarchy_error.value)
    assert str(ring_error.value) == str(hierarchy_error.value)

"""Skeleton registry (pipeline/skeleton.py): flip permutations, trees, protocol subsets, fixture names."""
from __future__ import annotations

import json

import pytest

from pipeline.skeleton import SKELETONS, get_skeleton, joint_slices

NAMES = sorted(SKELETONS)


def test_registry_has_the_design_skeletons():
    assert {"smpl24", "h36m17", "mpi_inf_3dhp17", "mpi_inf_3dhp28", "coco17"} <= set(SKELETONS)
    assert [get_skeleton(n).num_joints for n in ("smpl24", "h36m17", "mpi_inf_3dhp17", "mpi_inf_3dhp28",
                                                 "coco17")] == [24, 17, 17, 28, 17]
    with pytest.raises(ValueError, match="unknown skeleton 'nope'"):
        get_skeleton("nope")


@pytest.mark.parametrize("name", NAMES)
def test_flip_perm_is_an_involution_that_swaps_sides(name):
    sk = get_skeleton(name)
    perm = sk.flip_perm
    assert sorted(perm) == list(range(sk.num_joints))
    assert all(perm[perm[i]] == i for i in range(sk.num_joints))
    for i, j in enumerate(perm):
        side = sk.side(i)
        assert sk.side(j) == {"l": "r", "r": "l", "c": "c"}[side]
        if side == "c":
            assert i == j
        else:
            assert sk.joint_names[i][2:] == sk.joint_names[j][2:]
    assert all(perm[i] == j and perm[j] == i and i < j for i, j in sk.flip_pairs)
    assert len(sk.flip_pairs) == sum(sk.side(i) == "l" for i in range(sk.num_joints)) > 0


@pytest.mark.parametrize("name", NAMES)
def test_parents_form_a_tree_rooted_at_root(name):
    sk = get_skeleton(name)
    roots = [i for i, p in enumerate(sk.parents) if p == -1]
    assert len(roots) == 1
    if sk.root is not None:
        assert roots == [sk.root] and sk.has_3d
    else:
        assert name == "coco17" and not sk.has_3d
    for i in range(sk.num_joints):            # every chain reaches the root without a cycle
        seen, j = set(), i
        while sk.parents[j] != -1:
            assert j not in seen, f"{name}: cycle through joint {j}"
            seen.add(j)
            j = sk.parents[j]
            assert 0 <= j < sk.num_joints
        assert j == roots[0]
    assert len(sk.edges) == sk.num_joints - 1
    # a mirrored skeleton has mirrored bones
    perm = sk.flip_perm
    assert {(perm[p], perm[c]) for p, c in sk.edges} == set(sk.edges)


def test_h36m14_subset():
    sk = get_skeleton("h36m17")
    sub = sk.eval_subsets["h36m14"]
    assert sub == (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)
    assert [sk.joint_names[i] for i in sub] == [
        "l_ankle", "l_knee", "l_hip", "r_hip", "r_knee", "r_ankle", "r_wrist", "r_elbow", "r_shoulder",
        "l_shoulder", "l_elbow", "l_wrist", "thorax", "head_top"]


def test_3dhp_28_to_17_map_is_consistent_with_names():
    s28, s17 = get_skeleton("mpi_inf_3dhp28"), get_skeleton("mpi_inf_3dhp17")
    m = s28.eval_subsets["to_17"]
    assert len(m) == 17 and len(set(m)) == 17
    assert tuple(s28.joint_names[i] for i in m) == s17.joint_names
    assert m[s17.root] == s28.root
    # the official 1-based relevant-joint list of the 3DHP test protocol
    assert [i + 1 for i in m] == [8, 6, 15, 16, 17, 10, 11, 12, 24, 25, 26, 19, 20, 21, 5, 4, 7]
    assert s17.root == 14 and s17.eval_subsets["pck14"] == tuple(range(14))


def test_h36m17_names_match_fixture(fixtures_dir):
    data = json.loads((fixtures_dir / "h36m" / "labels.json").read_text())
    names = tuple(n.replace("right_", "r_").replace("left_", "l_") for n in data["joint_names"])
    sk = get_skeleton("h36m17")
    assert names == sk.joint_names and data["root_index"] == sk.root
    assert all(s["skeleton"] == "h36m17" for s in data["samples"])


def test_joint_slices_concatenate_in_order():
    sl = joint_slices(["smpl24", "h36m17", "mpi_inf_3dhp17", "coco17"])
    assert sl == {"smpl24": slice(0, 24), "h36m17": slice(24, 41), "mpi_inf_3dhp17": slice(41, 58),
                  "coco17": slice(58, 75)}
    with pytest.raises(ValueError):
        joint_slices(["smpl24", "bogus"])

"""The member list survives a restart, whatever the member IDs' bytes."""

from etcdstore.membership import Member, Membership
from etcdstore.storage.backend import Backend


def test_members_with_any_id_survive_reopen(tmp_path):
    ids = [0x01, 0x7F00000000000000, 0xFF981D53E1EC6F52, 0xFFFFFFFFFFFFFFFF]
    m = Membership(cluster_id=0xBEE5E01BCBB9CB5B)
    for i, mid in enumerate(ids):
        m.members[mid] = Member(id=mid, name=f"m{i}", peer_urls=[f"http://127.0.0.1:{2380 + i}"])
    m.removed = {0x02, 0xFFC19028AACB96ED}
    be = Backend(tmp_path / "db")
    b = be.batch()
    m.save_all(b)
    be.write(b, sync=True)
    be.close()
    be = Backend(tmp_path / "db")
    loaded = Membership.load(be)
    assert loaded.cluster_id == m.cluster_id
    assert sorted(loaded.members) == sorted(ids)
    assert loaded.members[0xFF981D53E1EC6F52].name == "m2"
    assert loaded.removed == m.removed
    be.close()

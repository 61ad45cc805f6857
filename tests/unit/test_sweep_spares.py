"""The sweep's pool of spare state files (iclf.sweep.spares): a finished trial's states kept for the
running trials to overwrite. Each inode goes in once, a claimed spare goes to one trial only, a
file another link still holds is never handed out. Real files and hard links."""

import os

from iclf.sweep import spares


def _file(path, size=1000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def test_deposit_takes_each_inode_once_up_to_the_limit(tmp_path):
    pool = tmp_path / spares.POOL_DIR
    a = _file(tmp_path / "t1" / "checkpoint" / "state.pt")
    linked = tmp_path / "t1" / "snapshots" / "epoch_000002" / "state.pt"
    linked.parent.mkdir(parents=True)
    os.link(a, linked)
    b = _file(tmp_path / "t1" / "snapshots" / "epoch_000001" / "state.pt")
    c = _file(tmp_path / "t1" / "checkpoint" / ".state.pt.spare")
    missing = tmp_path / "t1" / "nothing.pt"
    assert spares.deposit([a, linked, missing, b, c], pool, limit=2) == 2
    held = sorted(pool.iterdir())
    assert len(held) == 2 and not a.exists() and not b.exists()
    assert linked.exists() and c.exists()  # the same inode as a; over the limit: the caller's
    assert spares.deposit([c], pool, limit=2) == 0


def test_a_spare_is_claimed_once_and_never_while_another_link_holds_it(tmp_path):
    pool = tmp_path / spares.POOL_DIR
    first = _file(tmp_path / "done" / "state.pt", 4000)
    spares.deposit([first], pool, limit=4)
    (spare,) = pool.iterdir()
    os.link(spare, tmp_path / "still-linked")
    mine = tmp_path / "t2" / "checkpoint" / ".state.pt.spare"
    assert not spares.claim(pool, mine)  # a snapshot still links it
    (tmp_path / "still-linked").unlink()
    assert spares.claim(pool, mine) and mine.stat().st_size == 4000
    assert not spares.claim(pool, tmp_path / "t3" / "checkpoint" / ".state.pt.spare")
    assert not spares.claim(tmp_path / "no-pool", tmp_path / "t4" / "x")
    spares.clear(pool)
    assert not pool.exists()

from pathlib import Path

import pytest

from fl_client.training.corpus import SHIPPED_CORPUS, load_shards
from mpc_agg.errors import ConfigError


def test_shipped_corpus_is_non_iid_with_disjoint_eval() -> None:
    shards = load_shards(5)
    assert len(set(shards.sources)) == 5  # one topic per client
    assert all(len(t) > 50 for t in shards.train)
    train = {p for t in shards.train for p in t}
    assert train.isdisjoint(shards.eval) and len(shards.eval) >= 5
    assert sum(f.stat().st_size for f in SHIPPED_CORPUS.glob("*.txt")) < 300_000


def test_more_clients_than_topics_split_a_topic() -> None:
    shards = load_shards(7)
    assert shards.sources[0] == shards.sources[5]
    assert set(shards.train[0]).isdisjoint(shards.train[5])


def test_user_data_dir_one_entry_per_client(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "a.txt").write_text("\n\n".join(f"alice paragraph {i}" for i in range(20)))
    (tmp_path / "bob.txt").write_text("\n\n".join(f"bob paragraph {i}" for i in range(20)))
    shards = load_shards(2, tmp_path)
    assert shards.sources == ("alice", "bob.txt")
    assert all("alice" in p for p in shards.train[0]) and all("bob" in p for p in shards.train[1])
    with pytest.raises(ConfigError, match="2 client entries"):
        load_shards(3, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_shards(2, tmp_path / "nope")

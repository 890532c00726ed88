from collections import Counter

from ambient_rlhf.data.splits import hash_unit, split_of


def test_split_is_deterministic_and_follows_fractions():
    ids = [f"t{i}" for i in range(4000)]
    a = [split_of(i, (0.9, 0.05, 0.05)) for i in ids]
    assert a == [split_of(i, (0.9, 0.05, 0.05)) for i in ids]
    c = Counter(a)
    # binomial sd for 4000 draws at p=0.9 is 19: 3600 +- 100 is > 5 sd
    assert abs(c["train"] - 3600) < 100 and abs(c["valid"] - 200) < 60 and abs(c["test"] - 200) < 60


def test_salt_changes_the_split_and_extremes():
    assert hash_unit("x", "") != hash_unit("x", "other")
    assert all(split_of(f"t{i}", (1.0, 0.0, 0.0)) == "train" for i in range(100))
    assert all(split_of(f"t{i}", (0.0, 0.0, 1.0)) == "test" for i in range(100))

"""The cluster directory's choices (ray_zerocopy/_directory.py), as plain
Python: the Ray actor runs this class as it is, one call at a time. What
it answers is checked on a real multi-host cluster in test_simcluster.py."""
from ray_zerocopy._directory import Directory

D = "d" * 32


def described(max_serves=2):
    d = Directory(max_serves)
    d.add(D, "n0")
    d.describe(D, b"manifest", b"leaves")
    return d


def test_pullers_that_join_at_once_form_a_chain_each_link_carrying_the_model_once():
    d = described()
    got = {n: d.join(D, n)["source"] for n in ["n1", "n2", "n3", "n4"]}
    assert got == {"n1": "n0", "n2": "n1", "n3": "n2", "n4": "n3"}
    sources = d.sources(D)
    assert all(sources[n]["serving"] <= 1 for n in sources)
    # A relay's downstream learns where the relay writes (its relays read there).
    assert d.join(D, "n5", "/dev/shm/x/staging-5")["source"] in {"n0", "n4"}
    assert d.join(D, "n6")["staging"] == "/dev/shm/x/staging-5"


def test_no_holder_serves_more_than_its_limit_and_the_least_busy_is_chosen():
    d = described(max_serves=1)
    assert d.join(D, "n1")["source"] == "n0"
    d.add(D, "c1")  # a second complete holder, idle
    assert d.join(D, "n2")["source"] == "c1"  # n0 is at its limit; complete before partial
    assert d.join(D, "n3")["source"] == "n1"
    assert d.join(D, "n4")["source"] == "n2"
    # n2 fails n4: dropped, which gives back its own pull from c1, now free.
    assert d.switch(D, "n4", "n2", chunk=5)["source"] == "c1"


def test_a_partial_holder_serves_on_a_switch_only_the_chunks_it_has():
    d = described()
    d.join(D, "n1")
    d.progress(D, "n1", [0, 1])
    d.remove(D, "n0")
    assert d.switch(D, "n2", None, chunk=1)["source"] == "n1"
    assert d.switch(D, "n3", None, chunk=5) is None  # only a join may follow a puller from its start


def test_every_holder_at_its_limit_says_busy_and_an_unknown_model_says_none():
    d = described(max_serves=1)
    d.join(D, "n1")
    d.progress(D, "n1", [0, 1, 2])
    d.join(D, "n2")  # n2 follows n1
    assert d.switch(D, "n3", None, chunk=0) == {"busy": True}
    assert d.join(D, "n9")["source"] == "n2"  # a join may still follow the last of the chain
    assert d.join("e" * 32, "n1") is None
    assert d.lookup("e" * 32) is None


def test_a_failed_source_is_dropped_and_its_pulls_released():
    d = described()
    d.add(D, "c1")
    assert d.join(D, "n1")["source"] == "n0"
    d.progress(D, "n1", [0, 1])
    assert d.join(D, "n2")["source"] == "c1"
    # n0 dies: n1 switches, from chunk 2, to the complete holder c1.
    answer = d.switch(D, "n1", "n0", chunk=2)
    assert answer["source"] == "c1"
    assert "n0" not in d.sources(D)
    # c1 fails n2 (e.g. served altered bytes): dropped; n2 goes to n1, which has chunk 0.
    assert d.switch(D, "n2", "c1", chunk=0, exclude=["c1"])["source"] == "n1"
    assert "c1" not in d.sources(D)
    # n1 finishes: complete, and its source's count of pulls went back down.
    d.done(D, "n1", True)
    assert d.sources(D)["n1"]["complete"] is True
    d.done(D, "n2", False)
    assert "n2" not in d.sources(D)
    assert d.sources(D)["n1"]["serving"] == 0


def test_a_puller_never_follows_its_own_downstream():
    d = described(max_serves=3)
    d.join(D, "n1")
    d.join(D, "n2")  # n2 <- n1
    d.remove(D, "n0")  # the publisher evicted it
    # n1 must find another source; n2 (pulling from n1) is no candidate: a cycle.
    assert d.switch(D, "n1", None, chunk=0) is None
    assert d.join(D, "n1") is None


def test_names_resolve_to_digests():
    d = described()
    assert d.resolve("llama") is None
    d.name("llama", D)
    assert d.resolve("llama") == D
    assert d.lookup(D)["holders"] == {"n0": True}


def test_a_chain_never_grows_past_its_depth_limit_a_new_branch_starts_higher_up():
    d = Directory(max_serves=2, max_depth=3)
    d.add(D, "n0")
    got = {n: d.join(D, n)["source"] for n in ["n1", "n2", "n3", "n4", "n5", "n6"]}
    # n1 <- n0, n2 <- n1, n3 <- n2 (depth 3: the limit); n4 branches off
    # the least busy shallow holder, and its own chain grows from there.
    assert [got[n] for n in ["n1", "n2", "n3"]] == ["n0", "n1", "n2"]
    assert got["n4"] == "n0"
    assert got["n5"] == "n4" and got["n6"] == "n5"
    assert all(v["serving"] <= 2 for v in d.sources(D).values())


def test_chains_from_a_complete_holder_start_apart_and_their_relays_follow_their_order():
    d = described(max_serves=2)
    a, b = d.join(D, "a"), d.join(D, "b", max_depth=1)  # both straight from n0: two chains
    assert (a["source"], b["source"]) == ("n0", "n0")
    assert (a["start"], b["start"]) == (0.0, 0.5)
    follower = d.join(D, "a2")
    assert follower["source"] in {"a", "b"} and follower["start"] == d.sources(D)[follower["source"]]["start"]
    d.add(D, "c1")
    assert [d.join(D, n, max_depth=1)["start"] for n in ["x", "y"]] == [0.25, 0.75]  # the next chains, from c1


def test_when_the_complete_holders_go_the_chains_finish_from_each_other_taking_what_each_has_first():
    d = described(max_serves=2)
    d.join(D, "a")
    d.join(D, "b", max_depth=1)
    d.progress(D, "a", [0, 1])  # 4 chunks: a went from 0, b from the middle
    d.progress(D, "b", [2, 3])
    got = d.switch(D, "a", "n0", chunk=2)  # the publisher died under a
    assert got["source"] == "b" and got["have"] == [2, 3] and not got["complete"]
    assert "n0" not in d.sources(D)
    got = d.switch(D, "b", None, chunk=0, exclude=["n0"])
    assert got["source"] == "a" and got["have"] == [0, 1]


def test_a_puller_that_accepts_no_relay_starts_a_chain_of_its_own():
    d = described(max_serves=2)
    d.join(D, "a")
    assert d.join(D, "b", max_depth=1)["source"] == "n0"  # behind a, b would end a chain of two
    assert d.join(D, "c")["source"] in {"a", "b"}

"""Overview's facts are remembered in the federation folder, and the memo never outlives a file.

``published_facts`` reads every hospital's publication (seconds at 100,000
hospitals); its memo is used only while no publication, partition, the
manifest or the policy has changed, and reading through it gives exactly
what reading afresh gives.
"""

import os
import shutil

import pytest

from healthsync.cohort import facts
from healthsync.cohort.policy import CohortPolicy
from healthsync.data import load_federation
from healthsync.data.accessor import partition_path
from healthsync.data.synthetic import generate_federation
from healthsync.privacy import site


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    federation = generate_federation(
        tmp_path_factory.mktemp("memo") / "fed", hospitals=6, patients=60, seed=4
    )
    assert facts.publish(federation) == 6
    return federation


def afresh(federation, policy=None):
    (federation.data_dir / facts.MEMO_NAME).unlink(missing_ok=True)
    return facts.published_facts(federation, policy)


def same(a, b) -> bool:
    (ra, ma), (rb, mb) = a, b
    return (
        ma == mb and (ra is None) == (rb is None) and (ra is None or ra.to_dict() == rb.to_dict())
    )


def test_a_second_read_opens_no_publication_and_gives_the_same_facts(published, monkeypatch):
    first = afresh(published)
    assert (published.data_dir / facts.MEMO_NAME).is_file()
    monkeypatch.setattr(site.Site, "published", lambda self, name: pytest.fail("read again"))
    assert same(facts.published_facts(published), first)
    assert same(facts.published_facts(load_federation(published.data_dir)), first)


def test_a_changed_partition_or_publication_is_seen_at_once(tmp_path, monkeypatch):
    federation = generate_federation(tmp_path / "fed", hospitals=4, patients=60, seed=5)
    facts.publish(federation)
    remembered = facts.published_facts(federation)
    partition = partition_path(federation.data_dir, "h0001")
    # A copy that keeps the size and modification time (so its publication stays fresh):
    # only its inode tells, and the memo is not trusted.
    shutil.copy2(partition, tmp_path / "copy")
    os.replace(tmp_path / "copy", partition)
    reads = []
    published = site.Site.published
    monkeypatch.setattr(site.Site, "published", lambda s, n: reads.append(n) or published(s, n))
    assert same(facts.published_facts(federation), remembered) and len(reads) == 4
    # Written again (a new modification time): the publication is stale, the hospital
    # missing, as reading afresh says.
    stat = partition.stat()
    os.utime(partition, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    seen = facts.published_facts(federation)
    assert seen[1] == ["h0001"] and same(seen, afresh(federation))
    # Replaced outright, the memo's stamp of the old data is not the current one's.
    facts.publish(federation, ["h0001"])
    assert facts.published_facts(federation)[1] == []
    os.unlink(site.published_path(partition.parent, facts.FACTS))
    assert facts.published_facts(federation)[1] == ["h0001"]


def test_another_policy_or_a_damaged_memo_reads_afresh(published):
    strict = CohortPolicy(threshold=30)
    remembered = afresh(published)
    assert same(facts.published_facts(published, strict), afresh(published, strict))
    assert not same(facts.published_facts(published, strict), remembered)
    (published.data_dir / facts.MEMO_NAME).write_text("{not json")
    assert same(facts.published_facts(published), remembered)
    (published.data_dir / facts.MEMO_NAME).write_text('{"key": 1}')
    assert same(facts.published_facts(published), remembered)

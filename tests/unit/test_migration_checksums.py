"""Migration checksums without a database: what is recorded, what counts as changed."""

from __future__ import annotations

import hashlib

import pytest

from citeline.db.migrations import Migration, available_migrations, verify_checksums
from citeline.errors import DatabaseError, MigrationChecksumError

pytestmark = pytest.mark.unit


def test_every_shipped_migration_has_a_file_checksum():
    found = available_migrations()
    assert [m.version for m in found] == sorted({m.version for m in found})
    for mig in found:
        assert mig.checksum == hashlib.sha256(mig.sql.encode()).hexdigest()
        assert mig.filename == f"{mig.version:04d}_{mig.name}.sql"


def test_an_edited_applied_file_is_refused_and_unrecorded_ones_pass():
    mig = Migration(3, "serving", "CREATE TABLE t (id int);\n")
    verify_checksums({3: mig.checksum}, [mig], "ns")
    verify_checksums({3: None}, [mig], "ns")  # applied before checksums: adopted, not refused
    verify_checksums({}, [mig], "ns")  # pending
    with pytest.raises(MigrationChecksumError, match=r"0003_serving\.sql.*'ns'.*append-only") as caught:
        verify_checksums({3: "0" * 64}, [mig], "ns")
    assert isinstance(caught.value, DatabaseError)
